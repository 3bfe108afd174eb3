// app: the playground. Speaks the WebSocket protocol v1 of /v1/stream (docs/protocol.md):
//
//   page -> server  {"type":"generate","id":"p1","prompt":...,"max_tokens":...}
//                   {"type":"generate","id":"p2","messages":[{"role":"system",...},...],...}  (chat mode)
//                   {"type":"cancel","id":"p1"}
//   server -> page  accepted, token (index 0, 1, 2, ...), then exactly one done or error
//
// One connection for the page's life, reconnected with back-off when it drops. Each token
// is put on screen as its frame arrives (no batching per animation frame), so what a
// person sees is what the server streams.
import { startDashboard, setApiKey, authHeaders } from './dashboard.js';

const $ = (id) => document.getElementById(id);

const ui = {
  form: $('gen-form'), prompt: $('prompt'), generate: $('generate'), cancel: $('cancel'), clear: $('clear'),
  status: $('status'), count: $('token-count'), rate: $('token-rate'), ttft: $('ttft'),
  error: $('error'), errorCode: $('error-code'), errorMessage: $('error-message'), errorRetry: $('error-retry'),
  errorHint: $('error-hint'),
  outPrompt: $('output-prompt'), outText: $('output-text'), result: $('result'), conn: $('conn'),
  modeChat: $('mode-chat'), modeComplete: $('mode-complete'), systemBox: $('system-box'), system: $('system'),
  promptLabel: $('prompt-label'), output: $('output'), chatLog: $('chat-log'),
};

// ---- chat mode ------------------------------------------------------------------------
// The conversation lives in the page: each turn sends the system prompt (as it is now),
// every earlier turn and the new user message; the server's chat template makes the
// prompt. A turn joins the history when it ends (done, or cancelled: what was shown);
// a turn that fails leaves the history as it was and puts the message back.

const chat = { history: [] };  // [{role, content}] without the system prompt

function chatMode() { return ui.modeChat.checked; }

function applyMode() {
  const on = chatMode();
  ui.systemBox.hidden = !on;
  ui.chatLog.hidden = !on;
  ui.output.hidden = on;
  ui.promptLabel.textContent = on ? 'Message' : 'Prompt';
  ui.generate.textContent = on ? 'Send' : 'Generate';
  ui.clear.textContent = on ? 'New chat' : 'Clear';
  ui.prompt.placeholder = on ? 'Write a message' : 'Once upon a time';
}

function addBubble(role, text, state) {
  const div = document.createElement('div');
  div.className = 'msg';
  div.dataset.role = role;
  if (state) div.dataset.state = state;
  const r = document.createElement('span');
  r.className = 'role';
  r.textContent = role;
  const c = document.createElement('div');
  c.className = 'content';
  c.textContent = text;
  div.append(r, c);
  ui.chatLog.appendChild(div);
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
  return div;
}

function chatMessages(userText) {
  const msgs = [];
  const sys = ui.system.value;
  if (sys.trim() !== '') msgs.push({ role: 'system', content: sys });
  return msgs.concat(chat.history, [{ role: 'user', content: userText }]);
}

// ---- connection ---------------------------------------------------------------------

class streamConnection {
  constructor(url, onEvent, onState) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.backoff = 250;
    this.open();
  }

  open() {
    this.onState('connecting');
    let ws;
    try {
      // The key travels as the subprotocol bearer.KEY (a browser cannot set Authorization here).
      // inferd.v1 is offered too, so that the server answers with it and never echoes the key.
      ws = new WebSocket(this.url, apiKey ? ['inferd.v1', `bearer.${apiKey}`] : []);
    } catch (e) {  // a key with characters a subprotocol cannot hold
      this.onState('closed', e);
      return;
    }
    this.ws = ws;
    ws.onopen = () => { this.backoff = 250; this.onState('open'); };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      this.onEvent(ev);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState('closed', e);
      setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }

  get ready() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  send(frame) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}

// ---- the request on screen ----------------------------------------------------------

let seq = 0;
let current = null; // {id, tokens, started, firstAt, cancelRequested}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text ?? state;
  const live = state === 'waiting' || state === 'running' || state === 'cancelling';
  ui.cancel.disabled = !live;
  ui.generate.disabled = live;
  ui.modeChat.disabled = ui.modeComplete.disabled = live;
}

// What each error code of the protocol means for the person at the keyboard.
const ERROR_HINTS = {
  invalid_request: 'The server refused a value of this request; fix it and generate again.',
  overloaded: 'The server\'s queue is full. Try again shortly.',
  rate_limited: 'Too many requests: this client is over its rate limit, or this connection has too many in flight. Wait the retry time, or for some to finish.',
  timeout: 'The request ran past its deadline (timeout_ms).',
  unavailable: 'No model is loaded or no worker is healthy right now.',
  internal: 'The server failed on this request (see its log).',
  disconnected: 'The page is reconnecting; generate again once it says connected.',
};

function showError(code, message, retryAfterMs) {
  ui.error.hidden = false;
  ui.error.dataset.code = code;
  ui.errorCode.textContent = code;
  ui.errorMessage.textContent = message || '';
  ui.errorRetry.textContent = retryAfterMs ? `(retry after ${retryAfterMs} ms)` : '';
  ui.errorHint.textContent = ERROR_HINTS[code] || '';
}

function hideError() {
  ui.error.hidden = true;
  delete ui.error.dataset.code;
}

function resetOutput() {
  ui.outPrompt.textContent = '';
  ui.outText.textContent = '';
  ui.count.textContent = '0';
  ui.rate.textContent = '–';
  ui.ttft.textContent = '–';
  ui.result.hidden = true;
  hideError();
}

function ms(v) { return typeof v === 'number' ? `${v.toFixed(1)} ms` : '–'; }

// Text fields: "" means "not given" (the server's default applies). Number fields are
// sent as typed so that the server, not the page, judges ranges (and says why).
function numberField(id) {
  const t = $(id).value.trim();
  if (t === '') return undefined;
  const v = Number(t);
  return Number.isFinite(v) ? v : t;
}

// "a|b\n" -> ["a", "b\n"]: | separates sequences, \n \t \\ \| are escapes.
export function parseStop(text) {
  if (!text) return undefined;
  const out = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\\' && i + 1 < text.length) {
      const n = text[++i];
      cur += n === 'n' ? '\n' : n === 't' ? '\t' : n;
    } else if (c === '|') {
      if (cur) out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  if (cur) out.push(cur);
  return out.length ? out : undefined;
}

function buildFrame(id) {
  const frame = chatMode() ? { type: 'generate', id, messages: chatMessages(ui.prompt.value) }
                           : { type: 'generate', id, prompt: ui.prompt.value };
  for (const k of ['max_tokens', 'temperature', 'top_k', 'top_p', 'seed', 'timeout_ms']) {
    const v = numberField(k);
    if (v !== undefined) frame[k] = v;
  }
  const stop = parseStop($('stop').value);
  if (stop) frame.stop = stop;
  frame.priority = $('priority').value;
  return frame;
}

function onEvent(ev) {
  if (!current || ev.id !== current.id) {
    // An error without a usable id answers a frame of ours that the server could not read.
    if (ev.type === 'error' && ev.id === null && current) finish('error', ev);
    return;
  }
  switch (ev.type) {
    case 'accepted':
      if (!current.cancelRequested) setStatus('running', 'running');
      break;
    case 'token': {
      if (current.firstAt === null) {
        current.firstAt = performance.now();
        ui.ttft.textContent = ms(current.firstAt - current.started);
      }
      const span = document.createElement('span');
      span.className = 'tok';
      span.textContent = ev.text ?? '';
      span.title = `#${ev.index} id ${ev.token}`;
      if (current.chat) current.chat.reply += ev.text ?? '';
      // Follow the text while the reader is at the bottom; leave them be when they scrolled up.
      const out = current.chat ? ui.chatLog : ui.outText.parentElement;
      const follow = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      (current.chat ? current.chat.bubble.querySelector('.content') : ui.outText).appendChild(span);
      if (follow) out.scrollTop = out.scrollHeight;
      current.tokens++;
      ui.count.textContent = String(current.tokens);
      const secs = (performance.now() - current.firstAt) / 1000;
      if (current.tokens > 1 && secs > 0) ui.rate.textContent = ((current.tokens - 1) / secs).toFixed(1);
      break;
    }
    case 'done':
      finish(ev.finish_reason === 'cancelled' ? 'cancelled' : 'done', ev);
      break;
    case 'error':
      finish('error', ev);
      break;
  }
}

function finishChat(state) {
  const c = current.chat;
  if (state === 'error') {
    c.userBubble.remove();
    c.bubble.remove();
    if (ui.prompt.value === '') ui.prompt.value = c.user;
    return;
  }
  c.bubble.dataset.state = state;
  chat.history.push({ role: 'user', content: c.user }, { role: 'assistant', content: c.reply });
}

function finish(state, ev) {
  if (current?.chat) finishChat(state);
  if (state === 'error') {
    showError(ev.code, ev.message, ev.retry_after_ms);
    setStatus('error', `error: ${ev.code}`);
  } else {
    setStatus(state, state === 'cancelled' ? 'cancelled' : `done (${ev.finish_reason})`);
    $('r-finish').textContent = ev.finish_reason;
    $('r-prompt').textContent = ev.usage?.prompt_tokens ?? '–';
    $('r-completion').textContent = ev.usage?.completion_tokens ?? '–';
    $('r-queue').textContent = ms(ev.timing_ms?.queue);
    $('r-first').textContent = ms(ev.timing_ms?.first_token);
    $('r-total').textContent = ms(ev.timing_ms?.total);
    ui.result.hidden = false;
  }
  current = null;
}

function onConnState(state) {
  ui.conn.dataset.state = state;
  ui.conn.textContent = state === 'open' ? 'connected' : state === 'connecting' ? 'connecting…' : 'disconnected';
  if (state === 'closed' && current) {
    // The server cancels what a closed connection had in flight; say so rather than hang.
    finish('error', { code: 'disconnected', message: 'the connection to the server closed mid-request' });
  }
}

// ---- the served model and the API key -----------------------------------------------------

let apiKey = sessionStorage.getItem('inferd.apiKey') || '';
setApiKey(apiKey);

// GET /v1/models names the served model; a 401 means the server wants a key: the key field
// appears, and what is typed there is used for the WebSocket and every fetch.
async function showModel() {
  const el = $('model');
  try {
    const r = await fetch('/v1/models', { cache: 'no-store', headers: authHeaders() });
    if (r.status === 401) {
      $('key-form').hidden = false;
      el.textContent = apiKey ? 'model: wrong API key' : 'model: API key needed';
      return;
    }
    const m = (await r.json()).data[0];
    el.textContent = m.id;
    el.title = `GET /v1/models: ${m.id}${m.max_model_len ? `, context ${m.max_model_len} tokens` : ''}`;
  } catch (e) {
    el.textContent = 'model: ?';
    el.title = `GET /v1/models failed: ${e.message}`;
  }
}

$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  apiKey = $('api-key').value.trim();
  sessionStorage.setItem('inferd.apiKey', apiKey);
  setApiKey(apiKey);
  if (conn.ws) conn.ws.close();  // reconnects with the new subprotocol (else a retry is due anyway)
  showModel();
});
showModel();

const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const conn = new streamConnection(`${scheme}://${location.host}/v1/stream`, onEvent, onConnState);

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  if (current) return;
  resetOutput();
  const id = `p${++seq}`;
  const frame = buildFrame(id);
  current = { id, tokens: 0, started: performance.now(), firstAt: null, cancelRequested: false, chat: null };
  if (frame.messages) {
    const user = ui.prompt.value;
    current.chat = { user, reply: '', userBubble: addBubble('user', user), bubble: addBubble('assistant', '', 'streaming') };
    ui.prompt.value = '';
  } else {
    ui.outPrompt.textContent = frame.prompt;
  }
  setStatus('waiting', 'waiting');
  if (!conn.send(frame)) finish('error', { code: 'disconnected', message: 'not connected to the server yet' });
});

// Ctrl+Enter (Cmd+Enter) in the prompt generates.
ui.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.cancel.addEventListener('click', () => {
  if (!current) return;
  current.cancelRequested = true;
  conn.send({ type: 'cancel', id: current.id });
  setStatus('cancelling', 'cancelling…');
});

ui.clear.addEventListener('click', () => {
  if (current) return;
  resetOutput();
  setStatus('idle');
  if (chatMode()) {
    chat.history = [];
    ui.chatLog.replaceChildren();
  }
});

for (const r of [ui.modeChat, ui.modeComplete]) r.addEventListener('change', () => { if (!current) applyMode(); });
applyMode();

// /dashboard shows the dashboard alone; / shows both.
if (location.pathname.replace(/\/+$/, '') === '/dashboard') {
  document.body.classList.add('dashboard-only');
  $('nav-dashboard').classList.add('here');
} else {
  $('nav-playground').classList.add('here');
}

startDashboard();
