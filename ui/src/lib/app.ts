// The app's singletons: the backend, the engine client, the stores and the event stream.
import { createBackend } from './backend';
import { Engine } from './api/docker';
import { ContainersStore } from './stores/containers';
import { ImagesStore } from './stores/images';
import { LiveUpdates } from './stores/live';
import { loadPrefs } from './stores/prefs';
import { StatsStore } from './stores/stats';

export const engine = new Engine(createBackend());
export const containers = new ContainersStore(engine);
export const images = new ImagesStore(engine);
export const live = new LiveUpdates(engine, containers, images);
export const stats = new StatsStore(engine);

// The app's preferences: the chosen theme applies as soon as they are read.
void loadPrefs(engine.backend).catch(() => {});
