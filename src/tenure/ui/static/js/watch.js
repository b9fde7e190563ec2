// The watch (GET /v1/watch, Server-Sent Events) as the console holds it: the session cookie goes with the request,
// so no token is ever in its URL. Read with fetch rather than EventSource, so that every answer's status is known
// (401: the session ended; 410: history was compacted past our revision, list again) and resuming is ours: after
// any cut (the server gone, restarted, a proxy's timeout) the stream is opened again with since=<the last revision
// received>, so no event is lost and none comes twice.

import { unauthorized } from './api.js';

const RETRY_FIRST = 500;
const BREAK = /\r\n|\r|\n/g; // the SSE spec's line ends
// Error frames that the same request would meet again: the rest end a stream that is opened again.
const FATAL = new Set(['forbidden', 'invalid_kind', 'invalid_op', 'invalid_selector', 'invalid_since',
  'invalid_request']);
const RETRY_MAX = 8000;

const statuses = new Map(); // watch -> 'connecting' | 'listing' | 'live' | 'reconnecting'
const statusListeners = [];

export function onStatus(fn) {
  statusListeners.push(fn);
}

let notifying = false;

function notifySoon() { // the revision moved: the header says so, at most once a frame
  if (notifying) return;
  notifying = true;
  requestAnimationFrame(() => {
    notifying = false;
    setStatus(null, undefined);
  });
}

function setStatus(watch, status) {
  if (watch !== null) {
    if (status === null) statuses.delete(watch);
    else statuses.set(watch, status);
  }
  const all = [...statuses.values()];
  const summary = all.includes('reconnecting') ? 'reconnecting'
    : all.some((s) => s === 'connecting' || s === 'listing') ? 'connecting'
      : all.length ? 'live' : 'idle';
  for (const fn of statusListeners) fn(summary, Watch.revision);
}

export class Watch {
  static revision = null; // the newest revision any watch of this page has seen

  // query: the watch's filters (kind, selector, id, op: strings or arrays). initial: list the matching objects
  // first. since: resume after this revision. Handlers: onEvent(frame), onListed(revision), onReset() (the
  // view's data is to be dropped: a new listing follows, or, without initial, events were lost and the stream
  // continues from now), onBookmark(revision), onConnected() (the first frame of a connection that starts afresh,
  // not of a resume: a view that re-reads on change reads here, so nothing between its read and the stream is
  // missed), onError(error) (a
  // refusal that retrying cannot mend).
  constructor(query, { initial = false, since = null, onEvent, onListed, onReset, onBookmark, onConnected,
    onError } = {}) {
    this.query = query;
    this.initial = initial;
    this.revision = since;
    this.listed = since !== null || !initial;
    this.handlers = { onEvent, onListed, onReset, onBookmark, onConnected, onError };
    this.fresh = false; // no frame yet on this connection
    this.closed = false;
    this.controller = null;
  }

  start() {
    setStatus(this, 'connecting');
    this.run();
    return this;
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
    setStatus(this, null);
  }

  url() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(this.query || {})) {
      for (const v of [value].flat()) if (v !== undefined && v !== null && v !== '') params.append(key, v);
    }
    if (this.revision !== null) params.set('since', String(this.revision));
    else if (this.initial) params.set('initial', 'true');
    return `/v1/watch?${params}`;
  }

  // A view's handler that throws is a bug of the page: reported (the browser's console shows it), never taken for
  // a cut of the stream (which would reconnect and skip the event).
  call(name, ...args) {
    const fn = this.handlers[name];
    if (!fn) return;
    try {
      fn(...args);
    } catch (err) {
      reportError(err);
    }
  }

  async run() {
    let delay = RETRY_FIRST;
    while (!this.closed) {
      const listing = this.revision === null && this.initial;
      if (listing) {
        this.listed = false;
        this.call('onReset', 'listing');
        if (this.closed) return;
      }
      const resuming = this.revision !== null; // a resume replays what was missed: nothing to read again
      this.controller = new AbortController();
      let response;
      try {
        response = await fetch(this.url(), {
          credentials: 'same-origin', cache: 'no-store', signal: this.controller.signal,
          headers: { accept: 'text/event-stream' },
        });
      } catch {
        if (this.closed) return;
        setStatus(this, 'reconnecting');
        await sleep(delay);
        delay = Math.min(delay * 2, RETRY_MAX);
        continue;
      }
      if (!response.ok) {
        const error = await errorOf(response);
        if (this.closed) return;
        if (response.status === 401) {
          this.close();
          unauthorized(error);
          return;
        }
        if (response.status === 410 || (response.status === 400 && error.code === 'invalid_since' && resuming)) {
          // Our revision was compacted away, or is ahead of a store restored from a backup: list again (or, with
          // no listing, continue from now).
          this.revision = null;
          if (!this.initial) this.call('onReset', 'gone');
          continue;
        }
        if (response.status >= 500 || response.status === 429) {
          setStatus(this, 'reconnecting');
          await sleep(delay);
          delay = Math.min(delay * 2, RETRY_MAX);
          continue;
        }
        this.close();
        this.call('onError', error);
        return;
      }
      setStatus(this, listing ? 'listing' : 'live');
      this.fresh = !resuming;
      const opened = performance.now();
      let ended = null;
      try {
        ended = await this.read(response.body);
      } catch {
        ended = null; // cut: reconnect from the last revision
      }
      if (this.closed) return;
      // The backoff starts over only after a stream that lasted: one refused as soon as it opened keeps backing off.
      if (performance.now() - opened > 5000) delay = RETRY_FIRST;
      if (ended && ended.code === 'gone') {
        this.revision = null;
        if (!this.initial) this.call('onReset', 'gone');
        continue;
      }
      if (ended && (ended.code === 'unauthorized' || ended.code === 'invalid_session')) {
        this.close();
        unauthorized(ended);
        return;
      }
      if (ended && FATAL.has(ended.code)) {
        this.close();
        this.call('onError', ended);
        return;
      }
      // Anything else (the server shutting down, the store away under a replay, a listing's turn or time): again.
      setStatus(this, 'reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX);
    }
  }

  // Reads frames until the stream ends; answers the error frame that ended it, if one did.
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let frame = { event: 'message', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value;
      let start = 0;
      for (;;) {
        BREAK.lastIndex = start; // linear in the chunk: no copy of the rest of the buffer per line
        const found = BREAK.exec(buffer);
        if (!found) break;
        if (found[0] === '\r' && found.index === buffer.length - 1) break; // maybe the first half of \r\n
        const end = found.index;
        const line = buffer.slice(start, end);
        start = end + found[0].length;
        if (line === '') {
          if (frame.data.length) {
            const error = this.dispatch(frame);
            if (error) {
              reader.cancel().catch(() => {});
              return error;
            }
            if (this.closed) { // a handler closed this watch: nothing more of this stream
              reader.cancel().catch(() => {});
              return null;
            }
          }
          frame = { event: 'message', data: [], id: null };
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') frame.data.push(val);
          else if (field === 'event') frame.event = val;
          else if (field === 'id') frame.id = val;
        }
      }
      buffer = buffer.slice(start);
    }
  }

  dispatch(frame) {
    let data;
    try {
      data = JSON.parse(frame.data.join('\n'));
    } catch {
      return null;
    }
    if (this.fresh && frame.event !== 'error') {
      this.fresh = false;
      this.call('onConnected');
    }
    if (frame.event === 'error') return (data && data.error) || { code: 'error', message: 'the watch failed' };
    if (frame.event === 'bookmark') {
      this.advance(data.revision);
      if (data.initial_end && !this.listed) {
        this.listed = true;
        setStatus(this, 'live');
        this.call('onListed', data.revision);
      }
      this.call('onBookmark', data.revision);
      return null;
    }
    if (frame.id !== null) this.advance(Number(frame.id));
    this.call('onEvent', data);
    return null;
  }

  advance(revision) {
    if (!Number.isFinite(revision)) return;
    this.revision = revision;
    if (Watch.revision === null || revision > Watch.revision) {
      Watch.revision = revision;
      notifySoon();
    }
  }
}

async function errorOf(response) {
  try {
    const data = await response.json();
    return (data && data.error) || { code: 'http_error', message: `HTTP ${response.status}` };
  } catch {
    return { code: 'http_error', message: `HTTP ${response.status}` };
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
