// Not built yet (docs/console.md, build order): the API and the CLI have it meanwhile.
import { h } from '../dom.js';

export function mount(root) {
  root.append(h('h1', { id: 'view-title' }, 'Topology'), h('p', { class: 'muted' }, 'This view is not built yet.'));
  return { unmount: () => {} };
}
