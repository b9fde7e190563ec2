// The API, as the console calls it: the session cookie (same origin), and on every change the header that a form
// on another site cannot send. An error is the API's {"error": {"code", "message"}}.

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || 'http_error';
    this.details = error;
  }
}

const listeners = { unauthorized: [] };

export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

export function unauthorized(error) {
  for (const fn of listeners.unauthorized) fn(error);
}

export async function api(method, path, body, { signal, quiet401 = false } = {}) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['x-tenure-console'] = '1';
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin', cache: 'no-store', signal,
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { code: 'unreachable', message: 'the server cannot be reached' });
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, (data && data.error) || { message: text.slice(0, 200) });
    if (response.status === 401 && !quiet401) unauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
