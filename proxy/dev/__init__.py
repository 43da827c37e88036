"""The dev stack: `quorum-signer dev` (`stack`) and the local anvil chain that it and the tests
run (`chain`)."""
