// The image list, re-read whole on image events (image events are rare and lists short next to
// containers), with "in use" computed from the containers.
import { writable, type Readable } from 'svelte/store';
import type { Engine } from '../api/docker';
import type { ContainerSummary, ImageSummary } from '../api/types';
import type { ListState } from './containers';

export class ImagesStore implements Readable<ListState<ImageSummary>> {
  private readonly state = writable<ListState<ImageSummary>>({ items: [], loaded: false });
  readonly subscribe = this.state.subscribe;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private generation = 0;

  constructor(
    private readonly engine: Pick<Engine, 'listImages'>,
    private readonly delayMs = 50,
  ) {}

  async load(): Promise<void> {
    const gen = ++this.generation;
    try {
      const items = await this.engine.listImages();
      if (gen !== this.generation) return;
      this.state.set({ items, loaded: true });
    } catch (e) {
      this.state.update((s) => ({ ...s, loaded: true, error: (e as Error).message }));
    }
  }

  /** Re-reads the list soon; several calls in a row make one read. */
  stale(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.load();
    }, this.delayMs);
  }
}

/** How many containers use each image id. */
export function usage(containers: ContainerSummary[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const c of containers) {
    if (c.ImageID) m.set(c.ImageID, (m.get(c.ImageID) ?? 0) + 1);
  }
  return m;
}
