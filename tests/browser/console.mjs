// The web console in a real browser (Debian's chromium driven by playwright-core, headless), one
// scenario per run (CONSOLE_SCENARIO). Credentials come in the environment, never argv. Prints
// one JSON report on its last line: what was seen, every URL the page requested, CSP
// violations, page errors, and the screenshots taken (under CONSOLE_SHOTS).
import { chromium } from "playwright-core";
import path from "node:path";

const env = process.env;
const base = env.CONSOLE_URL;
const shots = env.CONSOLE_SHOTS;
const report = { scenario: env.CONSOLE_SCENARIO, urls: [], sockets: [], csp: [], errors: [], shots: [], seen: {} };

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});

async function newPage(width = 1280, height = 800) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.on("request", (r) => report.urls.push(r.url()));
  page.on("websocket", (ws) => report.sockets.push(ws.url()));
  page.on("pageerror", (e) => report.errors.push(String(e)));
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) report.csp.push(m.text()); });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.setDefaultTimeout(20000);
  return page;
}

async function shot(page, name) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  report.shots.push(file);
}

async function signIn(page, credential, password = "") {
  await page.goto(`${base}/admin/`);
  await page.getByLabel("API key or JWT").fill(credential);
  if (password) await page.getByLabel(/^Password/).fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function view(page, hash, name) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForSelector(`#view[data-view="${name}"][aria-busy="false"]`);
}

async function rpc(url, method, params, credential) {
  const headers = { "Content-Type": "application/json" };
  if (credential) headers.Authorization = `Bearer ${credential}`;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }) });
  return response.json();
}

async function collect(page) {
  report.csp.push(...(await page.evaluate(() => window.__csp)));
  report.seen.html = (report.seen.html || "") + (await page.content());
}

try {
  if (env.CONSOLE_SCENARIO === "admin") {
    const page = await newPage();
    await signIn(page, env.ADMIN_KEY);
    await page.waitForSelector('#view[data-view="approvals"][aria-busy="false"]');
    await page.waitForSelector("#live[data-live=on]");
    report.seen.who = await page.textContent("#who-text");
    // The held request, reviewed in the confirmation, then approved.
    await page.getByRole("button", { name: `Review ${env.APPROVAL_ID}` }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    report.seen.dialog = await dialog.innerText();
    await shot(page, "approvals-confirm");
    await page.getByLabel("Comment (kept in the audit log)").fill("checked with the treasurer");
    await dialog.getByRole("button", { name: "Approve" }).click();
    await page.waitForFunction(() => /approved/.test(document.getElementById("status").textContent));
    report.seen.status = await page.textContent("#status");
    await shot(page, "approvals");

    // The account's nonce timeline; the requester sends the approved request again: it moves
    // from sent to mined in place, without a reload.
    await view(page, `#account/${env.ACCOUNT}`, "account");
    await page.evaluate(() => {
      window.__stillHere = true;
      window.__states = [];
      new MutationObserver((changes) => {
        for (const c of changes) {
          const nodes = c.type === "attributes" ? [c.target] : [...c.addedNodes].flatMap((n) => n.querySelectorAll ? [n, ...n.querySelectorAll("[data-hash]")] : []);
          for (const n of nodes) if (n.dataset && n.dataset.hash && n.tagName === "LI") window.__states.push([n.dataset.hash, n.dataset.state]);
        }
      }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"] });
    });
    const sent = await rpc(`${base}/`, "eth_sendTransaction", [JSON.parse(env.HELD_TX)], env.SIGNER_KEY);
    if (!sent.result) throw new Error("the approved request did not go through: " + JSON.stringify(sent));
    report.seen.hash = sent.result;
    const li = `ol.timeline li[data-hash="${sent.result}"]`;
    await page.waitForSelector(`${li}[data-state="sent"], ${li}[data-state="mined"]`);
    await shot(page, "account-sent");
    await page.waitForSelector(`${li}[data-state="mined"]`, { timeout: 30000 });
    await shot(page, "account-mined");
    report.seen.states = (await page.evaluate(() => window.__states)).filter(([h]) => h === sent.result).map(([, s]) => s);
    report.seen.reloaded = !(await page.evaluate(() => window.__stillHere === true));

    await view(page, "#transactions", "transactions");
    await shot(page, "transactions");
    await view(page, `#tx/${sent.result}`, "tx");
    report.seen.life = await page.innerText("#view");
    await shot(page, "transaction");
    await view(page, "#accounts", "accounts");
    await shot(page, "accounts");
    await view(page, "#audit", "audit");
    report.seen.audit = await page.getAttribute("#audit-verify", "data-intact");
    await shot(page, "audit");
    await view(page, "#users", "users");
    report.seen.users = await page.innerText("#view");
    await shot(page, "users");
    await view(page, "#policy", "policy");
    const draft = page.getByLabel("Policy draft (YAML)");
    const source = await draft.inputValue();
    await draft.fill(source.replace("action: hold", "action: hodl"));
    await page.getByRole("button", { name: "Validate" }).click();
    await page.waitForFunction(() => /valid/i.test(document.getElementById("policy-output").textContent));
    report.seen.invalid = await page.textContent("#policy-output");
    await draft.fill(source.replace("gt: 1000}", "gt: 100000}"));
    await page.getByRole("button", { name: "Validate" }).click();
    await page.waitForFunction((before) => !["…", before].includes(document.getElementById("policy-output").textContent), report.seen.invalid);
    report.seen.validate = await page.textContent("#policy-output");
    await page.getByRole("button", { name: "Dry-run" }).click();
    await page.waitForFunction(() => /Replayed/.test(document.getElementById("policy-output").textContent));
    report.seen.dryRun = await page.textContent("#policy-output");
    await shot(page, "policy");
    await view(page, "#nodes", "nodes");
    report.seen.nodes = await page.innerText("#view");
    await shot(page, "nodes");
    await collect(page);

    // Phone width: the same session (session storage is per tab: sign in again).
    const phone = await newPage(390, 844);
    await signIn(phone, env.ADMIN_KEY);
    await phone.waitForSelector('#view[data-view="approvals"][aria-busy="false"]');
    await view(phone, "#approvals?state=used", "approvals");
    const overflow = () => phone.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    report.seen.phoneOverflow = await overflow();
    await shot(phone, "phone-approvals");
    await view(phone, `#account/${env.ACCOUNT}`, "account");
    report.seen.phoneOverflow ||= await overflow();
    await shot(phone, "phone-account");
    await collect(phone);
  } else if (env.CONSOLE_SCENARIO === "audit") {
    const page = await newPage();
    await signIn(page, env.ADMIN_KEY);
    await page.waitForSelector('#view[data-view="approvals"][aria-busy="false"]');
    await view(page, "#audit", "audit");
    report.seen.intact = await page.getAttribute("#audit-verify", "data-intact");
    report.seen.broken = await page.getAttribute("#audit-verify", "data-broken");
    report.seen.banner = await page.textContent("#audit-verify");
    report.seen.tampered = await page.$$eval("tr.tampered", (rows) => rows.map((r) => r.dataset.seq));
    await shot(page, "audit-tampered");
    await collect(page);
    // An admin's JWT: read-only without the password (no vote offered), able to vote with it.
    for (const [label, password] of [["jwt", ""], ["jwtWithPassword", env.JWT_PASSWORD]]) {
      await page.getByRole("button", { name: "Sign out" }).click();
      await signIn(page, env.ADMIN_JWT, password);
      await page.waitForSelector('#view[data-view="approvals"][aria-busy="false"]');
      await page.getByRole("button", { name: `Review ${env.APPROVAL_ID}` }).click();
      const dialog = page.getByRole("dialog");
      await dialog.waitFor();
      report.seen[label] = {
        who: await page.textContent("#who-text"),
        canApprove: await dialog.getByRole("button", { name: "Approve" }).count(),
        dialog: await dialog.innerText(),
      };
      await shot(page, `approvals-${label}`);
      await dialog.getByRole("button", { name: "Cancel" }).click();
    }
    // Users and keys: bob revokes his own API key (he is signed in with his JWT).
    await view(page, "#users", "users");
    await page.locator("tr", { has: page.getByRole("cell", { name: "bob", exact: true }) })
      .getByRole("button", { name: /^Revoke key / }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Revoke" }).click();
    await page.waitForFunction(() => /revoked/.test(document.getElementById("status").textContent));
    report.seen.revoked = await page.textContent("#status");
    await page.waitForSelector('#view[data-view="users"][aria-busy="false"]');
    await shot(page, "users-revoked");
    await collect(page);
  } else if (env.CONSOLE_SCENARIO === "outsiders") {
    const page = await newPage();
    report.seen.refused = {};
    for (const [who, credential] of [["viewer", env.VIEWER_JWT], ["signer", env.SIGNER_KEY]]) {
      await signIn(page, credential);
      await page.waitForFunction(() => document.getElementById("sign-in-error").textContent !== "");
      report.seen.refused[who] = {
        error: await page.textContent("#sign-in-error"),
        navHidden: await page.isHidden("#nav"),
        stored: await page.evaluate(() => sessionStorage.length),
      };
    }
    await shot(page, "viewer-refused");
    // Another organisation's admin: signs in, sees none of acme's, cannot act on it.
    await signIn(page, env.OTHER_KEY);
    await page.waitForSelector('#view[data-view="approvals"][aria-busy="false"]');
    report.seen.otherApprovals = await page.$$eval("[data-approval]", (rows) => rows.map((r) => r.dataset.approval));
    await shot(page, "other-org-approvals");
    await view(page, "#transactions", "transactions");
    report.seen.otherTransactions = await page.$$eval("tr[data-hash]", (rows) => rows.length);
    await view(page, `#account/${env.ACCOUNT}`, "account");
    report.seen.otherAccount = await page.innerText("#view");
    await view(page, `#tx/${env.ACME_TX}`, "tx");
    report.seen.otherTx = await page.innerText("#view");
    report.seen.otherApprove = await page.evaluate(async ([id]) => {
      const r = await fetch(`/admin/api/approvals/${id}/approve`, { method: "POST", headers: { Authorization: `Bearer ${sessionStorage.getItem("qsigner.console.credential")}` } });
      return r.status;
    }, [env.APPROVAL_ID]);
    await collect(page);
  } else {
    throw new Error(`no scenario ${env.CONSOLE_SCENARIO}`);
  }
} catch (error) {
  report.failure = String(error.stack || error);
} finally {
  await browser.close();
}
const html = report.seen.html || "";
delete report.seen.html;
report.htmlLength = html.length;
report.secretsInHtml = (env.CONSOLE_SECRETS || "").split("\n").filter((s) => s && html.includes(s)).length;
console.log(JSON.stringify(report));
