// Building the page: elements and text only. Nothing the server sends is ever parsed as HTML (no innerHTML):
// a name or label holding markup is shown as the text it is.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function table(columns, rows, { caption, empty = 'Nothing to show.', cls = 'list' } = {}) {
  // columns: [{label, num?}]; rows: arrays of cells (text or nodes). On a phone's width each cell shows its label.
  const head = h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)));
  const body = rows.length
    ? rows.map((cells) => h('tr', null, cells.map((cell, i) =>
      h('td', { class: columns[i].num ? 'num' : null, 'data-label': columns[i].label }, cell))))
    : [h('tr', null, h('td', { colspan: columns.length, class: 'muted' }, empty))];
  return h('div', { class: 'scroll' },
    h('table', { class: cls }, caption ? h('caption', { class: 'muted' }, caption) : null,
      h('thead', null, head), h('tbody', null, body)));
}

export function debounce(fn, ms) {
  let timer = null;
  const run = () => { timer = null; fn(); };
  const debounced = () => { if (timer === null) timer = setTimeout(run, ms); };
  debounced.cancel = () => { if (timer !== null) clearTimeout(timer); timer = null; };
  return debounced;
}

// A theme colour (a custom property of console.css) as the browser resolves it now: the stylesheet gives each as
// light-dark(...), which only an element's computed style turns into the colour of the current theme.
export function themeColour(name, fallback) {
  const probe = document.createElement('span');
  probe.style.color = `var(${name}, ${fallback})`;
  probe.hidden = true;
  document.body.append(probe);
  const colour = getComputedStyle(probe).color;
  probe.remove();
  return colour || fallback;
}
