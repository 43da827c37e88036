"""README's "Try it" snippets are exactly the ones `quorum-signer dev` prints, placeholders aside:
the banner and the README never drift apart (tests/acceptance/test_readme_snippets.py runs
README's against a real dev stack)."""

from __future__ import annotations

from proxy.dev import snippets
from tests.support.readme import snippets as readme_snippets


def test_readme_holds_the_banners_snippets_verbatim() -> None:
    readme = readme_snippets()
    assert list(readme) == [s.name for s in snippets.SNIPPETS]
    for snippet in snippets.SNIPPETS:
        assert readme[snippet.name] == (snippet.language, snippet.code), snippet.name


def test_every_placeholder_is_filled_in_the_banner() -> None:
    values = {"url": "http://10.0.0.1:9000", "api_key": "qsk_a_b",
              "account": "0x" + "ab" * 20, "token": "0x" + "cd" * 20}  # fmt: skip
    for snippet in snippets.SNIPPETS:
        rendered = snippets.render(snippet.code, **values)
        for placeholder in (snippets.URL, snippets.API_KEY, snippets.ACCOUNT, snippets.TOKEN):
            assert placeholder not in rendered, (snippet.name, placeholder)
    transfers = [s for s in snippets.SNIPPETS if snippets.RECIPIENT in s.code]
    assert {s.name for s in transfers} == {"web3.py", "ethers", "viem", "hardhat-script", "cast"}


def test_a_snippet_marker_needs_its_fenced_block() -> None:
    text = "<!-- snippet: a -->\n```sh\necho a\n```\n\n<!-- snippet: b -->\n```js\nx;\ny;\n```\n"
    assert readme_snippets(text) == {"a": ("sh", "echo a\n"), "b": ("js", "x;\ny;\n")}
