// The HTTP API, same origin. The person's access token (POST /auth/token, 1 h) lives in this
// module's memory only: never in a cookie (so no request carries it by itself and there is
// nothing for a cross-site form to ride on: no CSRF), never in storage (a reload logs out).

let token = null;
let claims = null;
let onSessionEnd = () => {};

export class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(typeof detail === 'string' ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

export const session = {
  get user() {
    return claims && { name: claims.name, admin: Boolean(claims.adm), expires: claims.exp * 1000 };
  },
  /** Called when the API refuses the token (expired): the app shows the login form. */
  set onEnd(fn) {
    onSessionEnd = fn;
  },
  async login(username, password) {
    const body = await call('POST', '/auth/token', { body: { username, password } });
    token = body.access_token;
    claims = decodeClaims(token);
  },
  logout() {
    token = null;
    claims = null;
  },
};

function decodeClaims(jwt) {
  const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
  return JSON.parse(atob(part));
}

/** One API call; resolves to the JSON body (null for 204), rejects with an ApiError. */
export async function call(method, path, { query, body, headers } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === null || v === undefined || v === '') continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, one);
  }
  const sentToken = token;
  const init = { method, headers: { Accept: 'application/json', ...headers }, cache: 'no-store' };
  if (sentToken) init.headers.Authorization = `Bearer ${sentToken}`;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch {
    throw new ApiError(0, null, null);
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data && data.detail, res.headers.get('Retry-After'));
    if (res.status === 401 && sentToken && sentToken === token) {
      session.logout();
      onSessionEnd(err);
    }
    throw err;
  }
  return data;
}

function unavailable(detail) {
  const d = String(detail || '');
  if (/broker/i.test(d)) return 'the broker is unavailable';
  if (/database busy/i.test(d)) return 'the database is busy';
  if (/database/i.test(d)) return 'the database is unavailable';
  if (/cache/i.test(d)) return 'the cache is unavailable';
  return 'the service is unavailable';
}

function invalid(detail) {
  if (!Array.isArray(detail)) return String(detail || 'the input was refused');
  return detail
    .map((e) => {
      const where = (e.loc || []).filter((p) => p !== 'body' && p !== 'query').join('.');
      return where ? `${where}: ${e.msg}` : e.msg;
    })
    .join('; ');
}

/**
 * A plain sentence for a failed call. `outcome` says what did not happen ("not accepted" for a
 * change, "could not load" for a read).
 */
export function explain(err, outcome = 'not accepted') {
  if (!(err instanceof ApiError)) return `something went wrong in the page (${err.message}); reload it`;
  const wait = err.retryAfter ? `try again in ${err.retryAfter} s` : 'try again shortly';
  switch (err.status) {
    case 0:
      return `${outcome}: the server cannot be reached — check the network and ${wait}`;
    case 503:
    case 502:
    case 504:
      return `${outcome}: ${unavailable(err.detail)} — ${wait}`;
    case 429:
      return /queue is full/.test(String(err.detail))
        ? `${outcome}: the device already has too many commands waiting — ${wait}`
        : `${outcome}: too many requests — ${wait}`;
    case 401:
      return `${outcome}: ${err.detail || 'not logged in'}`;
    case 403:
      return `${outcome}: you are not allowed to do this`;
    case 404:
      return `${outcome}: not found (deleted, or not yours)`;
    case 409:
      return `${outcome}: ${err.detail || 'it changed meanwhile'}`;
    case 413:
      return `${outcome}: the request is too large`;
    case 422:
      return `${outcome}: ${invalid(err.detail)}`;
    default:
      return `${outcome}: the server failed (HTTP ${err.status}) — ${wait}`;
  }
}
