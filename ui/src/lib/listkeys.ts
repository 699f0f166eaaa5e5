// Keyboard for the windowed lists (VirtualList): the grid keeps its active row in
// aria-activedescendant (`row-<key>`); Enter opens it, and Space toggles its selection here.

/** Makes Space on the grid inside `el` call `toggle` with the active row's key; returns the undo. */
export function spaceTogglesActiveRow(el: HTMLElement, toggle: (key: string) => void): () => void {
  const onkey = (e: KeyboardEvent) => {
    const t = e.target as HTMLElement;
    if (e.key !== ' ' || t.getAttribute('role') !== 'grid') return;
    const row = t.getAttribute('aria-activedescendant');
    if (!row?.startsWith('row-')) return;
    e.preventDefault();
    toggle(row.slice(4));
  };
  el.addEventListener('keydown', onkey);
  return () => el.removeEventListener('keydown', onkey);
}
