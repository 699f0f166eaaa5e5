// The current time for relative dates, ticking once a minute (no other timers while idle).
import { readable } from 'svelte/store';

export const now = readable(Date.now(), (set) => {
  const t = setInterval(() => set(Date.now()), 60_000);
  return () => clearInterval(t);
});
