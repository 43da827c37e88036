// quorum-signer's web console: sign-in, then one view per hash route (#approvals, #transactions,
// #tx/<hash>, #accounts, #account/<address>, #audit, #users, #policy, #nodes). Everything shown
// is built with text nodes (never HTML from data), and live events move rows in place.
import { api, ApiError, session } from "./api.js";
import { connect, disconnect, onEvent, onLiveStatus } from "./live.js";

const $ = (id) => document.getElementById(id);
let me = null;

// --- small DOM helpers ------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const short = (text) => (text && text.length > 14 ? `${text.slice(0, 8)}…${text.slice(-6)}` : text ?? "");
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "");

function ether(wei) {
  if (wei === undefined || wei === null || wei === "") return "";
  const value = BigInt(wei);
  const whole = value / 10n ** 18n;
  const part = (value % 10n ** 18n).toString().padStart(18, "0").replace(/0+$/, "");
  return `${wei} wei (${whole}${part ? "." + part : ""} ETH)`;
}

// The latest state each transaction's events told: a list fetched just before an event must not
// show the transaction going back.
const RANK = { reserved: 0, signed: 1, sent: 2, mined: 3, released: 3, replaced: 3 };
const latest = new Map();
function shownState(t) {
  const heard = t.hash ? latest.get(t.hash) : undefined;
  return heard && (RANK[heard] ?? 0) > (RANK[t.state] ?? 0) ? heard : t.state;
}

function stateChip(state) { return h("span", { class: "state", dataset: { state } }, state); }

function table(caption, headings, rows) {
  return h("div", { class: "table-wrap" },
    h("table", {}, h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headings.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

function field(label, control) {
  const id = control.id || `f-${label.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

function status(text) { $("status").textContent = text; }

function failure(error) {
  if (error instanceof ApiError && error.status === 401) { signOut(error.message); return; }
  status(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
}

// A confirmation dialog: resolves with the comment when `action` is chosen, null on cancel.
function confirmDialog({ title, body, actions, comment = false }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").replaceChildren(body);
  $("confirm-error").textContent = "";
  $("confirm-comment").value = "";
  $("confirm-comment-row").hidden = !comment;
  const bar = $("confirm-actions");
  bar.replaceChildren($("confirm-cancel"));
  return new Promise((resolve) => {
    const done = (value) => { dialog.close(); resolve(value); };
    $("confirm-cancel").onclick = () => done(null);
    dialog.oncancel = () => resolve(null);
    for (const action of actions) {
      bar.append(h("button", { type: "button", class: action.style, onclick: async (e) => {
        e.target.disabled = true;
        try {
          const result = await action.run($("confirm-comment").value.trim() || undefined);
          done(result);
        } catch (error) {
          if (error instanceof ApiError) $("confirm-error").textContent = `${error.code}: ${error.message}`;
          else $("confirm-error").textContent = String(error);
          e.target.disabled = false;
        }
      } }, action.label));
    }
    dialog.showModal();
  });
}

// --- sign-in ----------------------------------------------------------------------------------

async function signIn(credential, pw) {
  const who = await api("GET", "/me", { credential, pw: pw || null });
  session.start(credential, pw);
  return who;
}

function signOut(reason) {
  session.end();
  disconnect();
  me = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view").hidden = true;
  $("view").replaceChildren();
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = reason || "";
  status("");
}

async function enter(who) {
  me = who;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("who-text").textContent = `${who.user} · ${who.organisation} · ${who.role}` +
    (who.unlocked ? "" : " · read-only (no password: cannot approve)");
  connect();
  await route();
}

// --- views ------------------------------------------------------------------------------------

function approvalFacts(a) {
  const req = a.request || {};
  const call = a.call;
  const args = call && call.args
    ? h("dl", { class: "facts" }, Object.entries(call.args).flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)]))
    : null;
  return facts([
    ["Account", h("span", { class: "mono" }, a.summary.account ?? req.account ?? "")],
    ["Method", a.method],
    ["To", h("span", { class: "mono" }, a.summary.to ?? req.to ?? "(contract creation)")],
    ["Value", ether(a.summary.value ?? req.value)],
    ["Function", call ? (call.function ?? `unknown: selector ${call.selector ?? "(none)"}`) : "none (plain transfer)"],
    ["Arguments", args ?? (call ? h("span", { class: "mono" }, call.data + (call.data_cut ? " (cut)" : "")) : undefined)],
    ["Problem", call && call.problem ? call.problem : undefined],
    ["Rule", a.rule],
    ["Policy version", String(a.policy_version)],
    ["Requested by", a.requester],
    ["Approvals", `${a.approvals} of ${a.needed}`],
    ["Expires", when(a.expires_at)],
  ]);
}

async function review(a) {
  const canVote = me.unlocked && a.requester !== me.user && a.state === "pending";
  const vote = (verb) => async (comment) => {
    const result = await api("POST", `/approvals/${a.id}/${verb}`, { body: comment ? { comment } : {}, proof: true });
    status(`${a.id}: ${result.state} (${result.approvals} of ${result.needed})`);
    return result;
  };
  const note = !me.unlocked ? "Sign in with your password (or an API key) to approve or reject."
    : a.requester === me.user ? "You asked for this request: another admin must decide it." : null;
  const result = await confirmDialog({
    title: `Approve or reject ${a.id}?`,
    body: h("div", {}, approvalFacts(a), note ? h("p", { class: "error" }, note) : null),
    comment: canVote,
    actions: canVote ? [
      { label: "Reject", style: "danger", run: vote("reject") },
      { label: "Approve", style: "primary", run: vote("approve") },
    ] : [],
  });
  if (result) await route();
}

async function approvalsView(view, params) {
  const state = params.get("state") || "pending";
  const select = h("select", { id: "approvals-state" },
    ["pending", "approved", "rejected", "used", "expired"].map((s) => h("option", { value: s, selected: s === state }, s)));
  select.addEventListener("change", () => { location.hash = `#approvals?state=${select.value}`; });
  const page = await api("GET", "/approvals", { query: { state, limit: 100 } });
  const rows = page.items.map((a) => h("tr", { dataset: { approval: a.id } },
    h("td", { class: "mono" }, a.id), h("td", {}, a.requester),
    h("td", { class: "mono" }, short(a.summary.to ?? "")), h("td", {}, ether(a.summary.value)),
    h("td", {}, a.call ? (a.call.function ?? a.call.selector ?? "") : ""), h("td", {}, a.rule),
    h("td", {}, `${a.approvals}/${a.needed}`), h("td", {}, stateChip(a.state)), h("td", {}, when(a.expires_at)),
    h("td", {}, h("button", { type: "button", "aria-label": `Review ${a.id}`, onclick: () => review(a).catch(failure) }, "Review"))));
  view.append(h("h2", {}, "Approvals"), h("div", { class: "filters" }, field("State", select)),
    rows.length ? table("Held requests", ["Id", "Requested by", "To", "Value", "Function", "Rule", "Votes", "State", "Expires", ""], rows)
      : h("p", {}, `No ${state} requests.`));
}

function txRow(t) {
  const state = shownState(t);
  return h("tr", { dataset: { hash: t.hash ?? "", state } },
    h("td", { class: "mono" }, t.hash ? h("a", { href: `#tx/${t.hash}` }, short(t.hash)) : "(reserved)"),
    h("td", { class: "mono" }, h("a", { href: `#account/${t.account}` }, short(t.account))),
    h("td", {}, String(t.nonce)), h("td", { class: "tx-state" }, stateChip(state)), h("td", {}, t.kind),
    h("td", {}, t.user ?? ""), h("td", {}, t.block_number ?? ""), h("td", {}, when(t.created_at)));
}

async function transactionsView(view, params) {
  const query = { account: params.get("account"), state: params.get("state"), user: params.get("user"), limit: 50 };
  const account = h("input", { id: "tx-account", value: query.account ?? "", placeholder: "0x…", spellcheck: "false" });
  const user = h("input", { id: "tx-user", value: query.user ?? "" });
  const state = h("select", { id: "tx-state" }, h("option", { value: "" }, "any"),
    ["reserved", "signed", "sent", "mined", "released", "replaced"].map((s) => h("option", { value: s, selected: s === query.state }, s)));
  const filters = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (account.value.trim()) p.set("account", account.value.trim());
    if (user.value.trim()) p.set("user", user.value.trim());
    if (state.value) p.set("state", state.value);
    location.hash = `#transactions?${p}`;
  } }, field("Account", account), field("User", user), field("State", state), h("button", { type: "submit" }, "Filter"));
  const body = h("tbody");
  const more = h("button", { type: "button", class: "more", hidden: true }, "More");
  let cursor = null;
  const load = async () => {
    const page = await api("GET", "/transactions", { query: { ...query, cursor } });
    body.append(...page.items.map(txRow));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  };
  more.addEventListener("click", () => load().catch(failure));
  await load();
  view.append(h("h2", {}, "Transactions"), filters,
    h("div", { class: "table-wrap" }, h("table", { "aria-label": "Transactions" },
      h("thead", {}, h("tr", {}, ["Hash", "Account", "Nonce", "State", "Kind", "User", "Block", "Created"].map((x) => h("th", { scope: "col" }, x)))), body)),
    more);
}

async function transactionView(view, hash) {
  const life = await api("GET", `/transactions/${encodeURIComponent(hash)}`);
  const t = life.transaction;
  view.append(h("h2", {}, "Transaction"),
    facts([["Hash", h("span", { class: "mono" }, t.hash)], ["Account", h("a", { href: `#account/${t.account}` }, t.account)],
      ["Nonce", String(t.nonce)], ["State", h("span", { dataset: { hash: t.hash, state: shownState(t) }, class: "tx-state" }, stateChip(shownState(t)))],
      ["Kind", t.kind], ["User", t.user ?? ""], ["Request", t.request_id ?? ""], ["Node", t.node ?? ""],
      ["Block", t.block_number ?? ""], ["Receipt status", t.receipt_status ?? ""], ["Reason", t.reason ?? undefined],
      ["Created", when(t.created_at)], ["Signed", when(t.signed_at)], ["Sent", when(t.sent_at)], ["Mined", when(t.mined_at)]]),
    h("h3", {}, "Its life in the audit log"),
    h("ol", { class: "timeline" }, life.events.map((e) => h("li", {},
      h("strong", {}, `${e.content.kind} · ${e.content.action}`), ` — ${when(e.at)} (seq ${e.seq})`,
      e.content.rule ? ` rule ${e.content.rule}` : ""))),
    ...(life.earlier.length ? [h("h3", {}, "Earlier rows with the same bytes"),
      table("Earlier rows", ["Hash", "Account", "Nonce", "State", "Kind", "User", "Block", "Created"], life.earlier.map(txRow))] : []));
}

async function accountsView(view) {
  const page = await api("GET", "/accounts", { query: { limit: 200 } });
  view.append(h("h2", {}, "Accounts"), table("Accounts", ["Address", "Name", "Next nonce", "In flight", "Lowest in flight", "Last mined", "Holes", "Queue"],
    page.items.map((a) => h("tr", {},
      h("td", { class: "mono" }, h("a", { href: `#account/${a.address}` }, a.address)), h("td", {}, a.name ?? ""),
      h("td", {}, a.ledger.next_nonce ?? "—"), h("td", {}, String(a.ledger.in_flight)), h("td", {}, a.ledger.lowest_in_flight ?? "—"),
      h("td", {}, a.ledger.last_mined_nonce ?? "—"), h("td", {}, (a.ledger.holes || []).join(", ")), h("td", {}, String(a.ledger.queue_depth))))));
}

async function accountView(view, address) {
  // (Path parts from the address bar are encoded: a crafted link cannot steer the call elsewhere.)
  const [account, page] = await Promise.all([api("GET", `/accounts/${encodeURIComponent(address)}`),
    api("GET", "/transactions", { query: { account: address, limit: 100 } })]);
  const l = account.ledger;
  const items = [...page.items].sort((x, y) => x.nonce - y.nonce || (x.created_at < y.created_at ? -1 : 1));
  view.append(h("h2", {}, `Account ${account.name ?? ""}`),
    facts([["Address", h("span", { class: "mono" }, account.address)], ["Next nonce", String(l.next_nonce ?? "—")],
      ["In flight", String(l.in_flight)], ["Lowest in flight", String(l.lowest_in_flight ?? "—")],
      ["Last mined", `${l.last_mined_nonce ?? "—"} ${when(l.last_mined_at)}`], ["Holes", (l.holes || []).join(", ") || "none"],
      ["Queue depth", String(l.queue_depth)], ["Node counts", account.chain ? `mined ${account.chain.mined}, pending ${account.chain.pending}` : "no node answered"]]),
    h("h3", { id: "timeline-title" }, "Nonce timeline"),
    items.length ? h("ol", { class: "timeline", "aria-labelledby": "timeline-title" }, items.map((t) => h("li", { dataset: { hash: t.hash ?? "", state: shownState(t), nonce: t.nonce } },
      h("strong", {}, `nonce ${t.nonce} `), h("span", { class: "tx-state" }, stateChip(shownState(t))), " ",
      t.hash ? h("a", { href: `#tx/${t.hash}`, class: "mono" }, short(t.hash)) : "(reserved)",
      ` ${t.kind}${t.user ? " by " + t.user : ""}`, t.block_number ? ` · block ${t.block_number}` : "",
      ` · ${when(t.mined_at || t.sent_at || t.created_at)}`))) : h("p", {}, "No transactions through the proxy yet."));
}

async function auditView(view, params) {
  const kind = params.get("kind") || "";
  const select = h("select", { id: "audit-kind" }, h("option", { value: "" }, "any"),
    ["decision", "signed", "security"].map((k) => h("option", { value: k, selected: k === kind }, k)));
  select.addEventListener("change", () => { location.hash = select.value ? `#audit?kind=${select.value}` : "#audit"; });
  const [verify, page] = await Promise.all([api("GET", "/audit/verify"), api("GET", "/audit", { query: { kind, limit: 200 } })]);
  const last = verify.last_checkpoint;
  const checkpoint = last ? ` Last verified checkpoint: seq ${last.seq} at ${when(last.at)} (audit key ${last.address}).` : " No checkpoint yet.";
  const banner = verify.intact
    ? h("p", { class: "banner ok", id: "audit-verify", role: "status", dataset: { intact: "true" } },
      `Chain intact: ${verify.rows} rows, head seq ${verify.head_seq ?? "—"}, ${verify.checkpoints} checkpoints verified.${checkpoint}`)
    : h("p", { class: "banner bad", id: "audit-verify", role: "alert", dataset: { intact: "false", broken: verify.broken_seq } },
      `Chain BROKEN at seq ${verify.broken_seq}: ${verify.problem}.${checkpoint}`);
  const exportButton = h("button", { type: "button", onclick: async () => {
    try {
      const response = await api("GET", "/audit/export", { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: "audit-export.jsonl" });
      link.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status("Audit export downloaded (check it with: quorum-signer audit verify --file).");
    } catch (error) { failure(error); }
  } }, "Export");
  const rows = page.items.map((e) => {
    const tampered = !verify.intact && e.seq === verify.broken_seq;
    return h("tr", { class: tampered ? "tampered" : null, dataset: { seq: e.seq } },
      h("td", {}, String(e.seq), tampered ? [" ", h("span", { class: "badge" }, "tampered")] : null),
      h("td", {}, when(e.at)), h("td", {}, e.content.kind ?? ""), h("td", {}, e.content.action ?? ""),
      h("td", {}, e.content.user ?? ""), h("td", { class: "mono" }, e.content.rule ?? e.content.tx_hash ?? e.content.request_id ?? ""),
      h("td", { class: "mono" }, short(e.hash)));
  });
  view.append(h("h2", {}, "Audit log"), banner, h("div", { class: "filters" }, field("Kind", select), exportButton),
    table("Audit log", ["Seq", "At", "Kind", "Action", "User", "Subject", "Hash"], rows));
}

async function usersView(view) {
  const [users, keys] = await Promise.all([api("GET", "/users", { query: { limit: 500 } }), api("GET", "/api-keys", { query: { limit: 500 } })]);
  const act = (title, what, run) => confirmDialog({ title, body: h("p", {}, what),
    actions: [{ label: title.split(" ")[0], style: "danger", run }] }).then((done) => { if (done) route(); });
  view.append(h("h2", {}, "Users"), table("Users", ["User", "Role", "Status", "Locked until", "Accounts", "API keys", ""],
    users.items.map((u) => h("tr", {}, h("td", {}, u.id), h("td", {}, u.role), h("td", {}, stateChip(u.status)),
      h("td", {}, when(u.locked_until)), h("td", { class: "mono" }, u.accounts.map(short).join(", ")), h("td", {}, String(u.api_keys)),
      h("td", {}, h("button", { type: "button", disabled: u.status !== "active" || u.id === me.user, "aria-label": `Disable ${u.id}`,
        onclick: () => act(`Disable ${u.id}?`, `${u.id} will no longer sign or read, at once on every replica.`,
          async () => { await api("POST", `/users/${encodeURIComponent(u.id)}/disable`); status(`${u.id} disabled`); return true; }) }, "Disable"))))),
  h("h2", {}, "API keys"), table("API keys", ["Key id", "User", "Created", "Revoked", ""],
    keys.items.map((k) => h("tr", {}, h("td", { class: "mono" }, k.id), h("td", {}, k.user), h("td", {}, when(k.created_at)),
      h("td", {}, when(k.revoked_at)),
      h("td", {}, h("button", { type: "button", disabled: !!k.revoked_at, "aria-label": `Revoke key ${k.id}`,
        onclick: () => act(`Revoke key ${k.id}?`, `The key of ${k.user} will no longer authenticate, at once on every replica.`,
          async () => { await api("POST", `/api-keys/${k.id}/revoke`); status(`key ${k.id} revoked`); return true; }) }, "Revoke"))))));
}

async function policyView(view) {
  const policy = await api("GET", "/policy");
  const draft = h("textarea", { id: "policy-draft", spellcheck: "false" });
  draft.value = policy.source ?? "version: 1\ndefault: allow\nrules: []\n";
  const last = h("input", { id: "policy-last", type: "number", min: "1", max: "100000", value: "1000" });
  const output = h("pre", { class: "output", id: "policy-output", role: "status", "aria-live": "polite" });
  const run = (fn) => async () => { output.textContent = "…"; try { output.textContent = await fn(); } catch (e) { output.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e); } };
  view.append(h("h2", {}, "Policy"),
    h("p", {}, policy.version ? `Version ${policy.version} in force, installed ${when(policy.installed_at)}${policy.installed_by ? " by " + policy.installed_by : " from the command line"}.` : "No policy: every request is allowed."),
    field("Policy draft (YAML)", draft),
    h("div", { class: "filters" }, field("Requests to replay", last),
      h("button", { type: "button", onclick: run(async () => {
        const r = await api("POST", "/policy/validate", { body: { source: draft.value } });
        return r.valid ? "Valid." : `Not valid: ${r.error}`;
      }) }, "Validate"),
      h("button", { type: "button", onclick: run(async () => {
        const r = await api("POST", "/policy/dry-run", { body: { source: draft.value, last: Number(last.value) || 1000 } });
        return `Replayed ${r.replayed} requests; ${r.changed.length} decisions would change.` +
          r.changed.map((c) => `\n${c.request_id ?? "(no id)"}: ${c.old} → ${c.new}`).join("");
      }) }, "Dry-run"),
      h("button", { type: "button", class: "primary", onclick: async () => {
        const done = await confirmDialog({ title: "Install this policy?", body: h("p", {}, "It becomes the next version, in force on every replica within a second."),
          actions: [{ label: "Install", style: "primary", run: async () => api("PUT", "/policy", { body: { source: draft.value } }) }] });
        if (done) { status(`policy version ${done.version} installed`); route(); }
      } }, "Install")),
    output);
}

async function nodesView(view) {
  const nodes = await api("GET", "/nodes");
  view.append(h("h2", {}, "Nodes"), h("p", {}, `Chain id ${nodes.chain_id ?? "unknown"}.`),
    table("Nodes", ["Node", "In rotation", "Reason", "Block", "Chain id", "Requests under way"],
      nodes.nodes.map((n) => h("tr", {}, h("td", { class: "mono" }, n.url), h("td", {}, stateChip(n.ok ? "up" : "down")),
        h("td", {}, n.reason ?? ""), h("td", {}, n.block ?? ""), h("td", {}, n.chain_id ?? ""), h("td", {}, String(n.in_flight))))),
    h("h3", {}, "Health history (this replica)"),
    table("Health history", ["At", "Node", "Change", "Reason"], [...nodes.history].reverse().map((c) => h("tr", {},
      h("td", {}, when(c.at)), h("td", { class: "mono" }, c.url), h("td", {}, c.ok ? "into rotation" : "out of rotation"), h("td", {}, c.reason ?? "")))));
}

// --- routing and live events -------------------------------------------------------------------

const VIEWS = { approvals: approvalsView, transactions: transactionsView, accounts: accountsView,
  audit: auditView, users: usersView, policy: policyView, nodes: nodesView };
let current = "";
let routing = 0;

async function route() {
  if (!me) return;
  const mine = ++routing;  // a slower, older call must not replace the view drawn after it
  const [path, search] = (location.hash.slice(1) || "approvals").split("?");
  const params = new URLSearchParams(search || "");
  const [name, arg] = path.split("/");
  current = name;
  for (const link of document.querySelectorAll("#nav a")) {
    const target = link.getAttribute("href").slice(1);
    if (target === name || (name === "tx" && target === "transactions") || (name === "account" && target === "accounts")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = h("section", { id: "view", "aria-busy": "true", dataset: { view: name } });
  try {
    if (name === "tx" && arg) await transactionView(view, arg);
    else if (name === "account" && arg) await accountView(view, arg);
    else await (VIEWS[name] || approvalsView)(view, params);
    if (mine !== routing) return;
    view.setAttribute("aria-busy", "false");
    $("view").replaceWith(view);
    document.title = `${view.querySelector("h2")?.textContent ?? "Console"} · quorum-signer`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { signOut(error.message); return; }
    if (mine !== routing) return;
    view.append(h("h2", {}, "Cannot show this"), h("p", { class: "error", role: "alert" },
      error instanceof ApiError ? `${error.code}: ${error.message}` : String(error)));
    view.setAttribute("aria-busy", "false");
    $("view").replaceWith(view);
  }
}

// A transaction event moves the rows showing its hash in place at once; then the view's data is
// read again (not the page), for new rows and the ledger's counts.
const STATES = { queued: "signed", sent: "sent", mined: "mined", failed: "released", filled: "replaced" };
let refresh = null;

onEvent((event) => {
  const state = STATES[event.event] ?? event.event;
  latest.set(event.transactionHash, state);
  if (latest.size > 5000) latest.delete(latest.keys().next().value);
  const shown = document.querySelectorAll(`[data-hash="${CSS.escape(event.transactionHash)}"]`);
  for (const node of shown) {
    node.dataset.state = state;
    const cell = node.querySelector(".tx-state") || (node.classList.contains("tx-state") ? node : null);
    if (cell) cell.replaceChildren(stateChip(state));
  }
  // (A list of transactions is read again only for a row it lacks: its filters and pages stay.)
  const stale = ["account", "accounts", "tx"].includes(current) || (current === "transactions" && !shown.length);
  if (stale && !refresh) {
    // Only the view that heard the event is read again: one left meanwhile (a policy being
    // edited, say) is never redrawn under the user's hands.
    const heard = location.hash;
    refresh = setTimeout(() => {
      refresh = null;
      if (location.hash === heard && !$("confirm").open) route();
    }, shown.length ? 1000 : 250);
  }
});

onLiveStatus((on) => {
  const live = $("live");
  live.dataset.live = on ? "on" : "off";
  live.textContent = on ? "live" : "offline";
});

window.addEventListener("hashchange", () => { status(""); route(); });

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const credential = $("credential").value.trim();
    const pw = $("password").value;
    $("sign-in-error").textContent = "";
    try {
      const who = await signIn(credential, pw);
      if (who.role !== "admin") throw new ApiError(403, "forbidden", "the console is for admins");
      $("credential").value = "";
      $("password").value = "";
      await enter(who);
    } catch (error) {
      session.end();
      $("sign-in-error").textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
    }
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  if (session.credential) {
    try { await enter(await api("GET", "/me")); } catch (error) { signOut(error.message); }
  }
});
