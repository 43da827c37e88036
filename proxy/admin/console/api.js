// The admin API as the console calls it: the credential in the Authorization header only (never
// in a URL), kept in this tab's session storage; the password (with a JWT) in memory only.
const KEY = "qsigner.console.credential";
let password = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get credential() { return sessionStorage.getItem(KEY); },
  get password() { return password; },
  start(credential, pw) {
    sessionStorage.setItem(KEY, credential);
    password = pw || null;
  },
  end() {
    sessionStorage.removeItem(KEY);
    password = null;
  },
};

// GET/POST/PUT /admin/api<path>; `query` values that are empty are left out. `proof` sends the
// password (approve and reject with a JWT), and only then: unlocking costs the server a PBKDF2.
export async function api(method, path, { query, body, proof = false, credential, pw, raw = false } = {}) {
  const url = new URL("api" + path, new URL("/admin/", location.href));
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  const headers = { Authorization: `Bearer ${credential || session.credential}` };
  const secret = pw !== undefined ? pw : (proof ? session.password : null);
  if (secret) headers["X-Signer-Password"] = secret;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
    });
  } catch (e) {
    throw new ApiError(0, "network", "the proxy cannot be reached: " + e.message);
  }
  if (raw && response.ok) return response;
  let answer = null;
  try { answer = await response.json(); } catch { answer = null; }
  if (!response.ok) {
    const error = answer && answer.error ? answer.error : { code: "http_" + response.status, message: response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  return answer;
}
