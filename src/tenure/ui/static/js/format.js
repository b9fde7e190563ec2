// Numbers with units and times in the browser's zone, as the CLI writes them (tenure.domain.units).

const SI = [['P', 1e15], ['T', 1e12], ['G', 1e9], ['M', 1e6], ['K', 1e3]];

// 40000000000 -> "40G", 2500000000 -> "2.5G", 1234567 -> "1.235M" (at most three decimals).
export function rate(bps) {
  if (bps === null || bps === undefined || Number.isNaN(Number(bps))) return '–';
  const value = Number(bps);
  for (const [suffix, scale] of SI) {
    if (Math.abs(value) >= scale) return `${trim(value / scale)}${suffix}`;
  }
  return String(Math.round(value));
}

function trim(x) {
  return String(Math.round(x * 1000) / 1000);
}

// 0.125 -> "12.5 %"
export function percent(share) {
  if (share === null || share === undefined || !Number.isFinite(share)) return '–';
  const p = share * 100;
  const digits = p !== 0 && Math.abs(p) < 1 ? 2 : 1;
  return `${Number(p.toFixed(digits))} %`;
}

export function count(n) {
  return Number(n).toLocaleString('en');
}

const local = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
});

// An instant as an element: the browser's zone shown, UTC on hover (and for screen readers, the datetime).
export function time(iso, doc = document) {
  if (!iso) return doc.createTextNode('–');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return doc.createTextNode(String(iso));
  const el = doc.createElement('time');
  el.dateTime = d.toISOString();
  el.dataset.iso = String(iso); // the server's own spelling (microseconds), for whoever compares
  el.title = `${d.toISOString().replace('.000Z', 'Z')} (UTC)`;
  el.textContent = local.format(d);
  return el;
}
