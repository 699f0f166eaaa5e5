// Typed calls to berthd over whichever backend runs: the Docker Engine API and Berth's admin
// API. No transport here: everything goes through `Backend`.
import { EngineError, type Backend, type EngineRequest, type EngineResponse } from '../backend/types';
import { JsonLines, LogDecoder, type LogLine } from './streams';
import { createBody } from './runspec';
import type {
  ContainerSummary,
  DockerEvent,
  DockerStats,
  EngineState,
  FieldError,
  ImageHistoryItem,
  ImageSummary,
  MirrorProbe,
  ProgressMessage,
  RestartVmResult,
  RunOptions,
  SettingsDocument,
  SettingsRead,
  SettingsWrite,
  ValidationReport,
} from './types';

/** One volume of `GET /volumes` (the fields the UI reads). */
export interface VolumeSummary {
  Name: string;
  Driver?: string;
  Mountpoint?: string;
  CreatedAt?: string;
}

function parse<T>(r: EngineResponse): T {
  if (r.status < 200 || r.status > 299) throw EngineError.fromResponse(r.status, r.text);
  if (!r.text) return undefined as T;
  try {
    return JSON.parse(r.text) as T;
  } catch {
    return r.text as T;
  }
}

export class Engine {
  constructor(readonly backend: Backend) {}

  private async call<T>(req: EngineRequest): Promise<T> {
    return parse<T>(await this.backend.request(req));
  }

  // --- system

  engineState(): Promise<EngineState> {
    return this.call({ method: 'GET', path: '/berth/v1/engine' });
  }

  version(): Promise<{ Version: string; ApiVersion: string }> {
    return this.call({ method: 'GET', path: '/version' });
  }

  /**
   * Follows `GET /events` until `signal` aborts; each object goes to `onEvent`. `onOpen` is
   * called when the stream is established. Rejects (EngineError) when it cannot be opened.
   */
  events(onEvent: (e: DockerEvent) => void, signal: AbortSignal, onOpen?: () => void): Promise<void> {
    const lines = new JsonLines<DockerEvent>(onEvent);
    return this.backend
      .stream({ method: 'GET', path: '/events' }, { onOpen, onChunk: (c) => lines.push(c) }, signal)
      .then(() => lines.end());
  }

  // --- containers

  /** One stats object (`stream=false`: berthd takes two samples a second apart, for CPU). */
  containerStats(id: string): Promise<DockerStats> {
    return this.call({ method: 'GET', path: `/containers/${encodeURIComponent(id)}/stats`, query: { stream: false } });
  }

  /**
   * Follows `GET /containers/{id}/stats?stream=1` (a stats object a second, each with the one
   * before as precpu) until the body ends or `signal` aborts.
   */
  statsStream(id: string, onStats: (s: DockerStats) => void, signal: AbortSignal): Promise<void> {
    const lines = new JsonLines<DockerStats>(onStats);
    return this.backend
      .stream({ method: 'GET', path: `/containers/${encodeURIComponent(id)}/stats`, query: { stream: 1 } }, { onChunk: (c) => lines.push(c) }, signal)
      .then(() => lines.end());
  }

  /** The image's layers, newest first (`docker history`). */
  imageHistory(name: string): Promise<ImageHistoryItem[]> {
    return this.call({ method: 'GET', path: `/images/${encodeURIComponent(name)}/history` });
  }

  listContainers(): Promise<ContainerSummary[]> {
    return this.call({ method: 'GET', path: '/containers/json', query: { all: 1 } });
  }

  /** One container's summary, or null when it is gone. */
  async container(id: string): Promise<ContainerSummary | null> {
    const list = await this.call<ContainerSummary[]>({
      method: 'GET',
      path: '/containers/json',
      query: { all: 1, filters: JSON.stringify({ id: [id] }) },
    });
    return list.find((c) => c.Id === id || c.Id.startsWith(id)) ?? null;
  }

  inspectContainer(id: string): Promise<Record<string, unknown>> {
    return this.call({ method: 'GET', path: `/containers/${encodeURIComponent(id)}/json` });
  }

  containerAction(id: string, action: 'start' | 'stop' | 'restart' | 'pause' | 'unpause' | 'kill'): Promise<void> {
    return this.call({ method: 'POST', path: `/containers/${encodeURIComponent(id)}/${action}` });
  }

  removeContainer(id: string, force = false): Promise<void> {
    return this.call({ method: 'DELETE', path: `/containers/${encodeURIComponent(id)}`, query: { force: force ? 1 : undefined } });
  }

  /** Creates and starts a container; answers its id. */
  async run(o: RunOptions): Promise<string> {
    const created = await this.call<{ Id: string }>({
      method: 'POST',
      path: '/containers/create',
      query: { name: o.name?.trim() || undefined },
      body: createBody(o),
    });
    await this.containerAction(created.Id, 'start');
    return created.Id;
  }

  /** Reads (and with `follow`, follows) a container's logs until the end or `signal`. */
  logs(
    id: string,
    opts: { follow: boolean; timestamps: boolean; tail?: number },
    onLine: (l: LogLine) => void,
    signal: AbortSignal,
  ): Promise<void> {
    let decoder: LogDecoder | null = null;
    return this.backend
      .stream(
        {
          method: 'GET',
          path: `/containers/${encodeURIComponent(id)}/logs`,
          query: {
            stdout: 1,
            stderr: 1,
            follow: opts.follow ? 1 : 0,
            timestamps: opts.timestamps ? 1 : 0,
            tail: opts.tail ?? 'all',
          },
        },
        {
          onOpen: (h) => {
            const ct = h.headers['content-type'] ?? '';
            decoder = new LogDecoder(ct.includes('multiplexed'), opts.timestamps, onLine);
          },
          onChunk: (c) => {
            decoder ??= new LogDecoder(true, opts.timestamps, onLine);
            decoder.push(c);
          },
        },
        signal,
      )
      .then(() => (decoder as LogDecoder | null)?.end());
  }

  // --- images

  listImages(): Promise<ImageSummary[]> {
    return this.call({ method: 'GET', path: '/images/json' });
  }

  inspectImage(name: string): Promise<Record<string, unknown>> {
    return this.call({ method: 'GET', path: `/images/${encodeURIComponent(name)}/json` });
  }

  removeImage(name: string, force = false): Promise<unknown> {
    return this.call({ method: 'DELETE', path: `/images/${encodeURIComponent(name)}`, query: { force: force ? 1 : undefined } });
  }

  tagImage(source: string, repo: string, tag: string): Promise<void> {
    return this.call({ method: 'POST', path: `/images/${encodeURIComponent(source)}/tag`, query: { repo, tag } });
  }

  /**
   * Pulls `reference`, each progress line to `onProgress`. Rejects with the stream's error
   * line when the pull fails after it started.
   */
  async pull(reference: string, onProgress: (m: ProgressMessage) => void, signal?: AbortSignal): Promise<void> {
    const { image, tag } = splitReference(reference);
    let failure: string | null = null;
    const lines = new JsonLines<ProgressMessage>((m) => {
      if (m.error || m.errorDetail) failure = m.errorDetail?.message ?? m.error ?? 'the pull failed';
      onProgress(m);
    });
    await this.backend.stream(
      { method: 'POST', path: '/images/create', query: { fromImage: image, tag } },
      { onChunk: (c) => lines.push(c) },
      signal,
    );
    lines.end();
    if (failure) throw new EngineError(500, failure);
  }

  // --- volumes

  /** The volumes (`GET /volumes`), by name. */
  async listVolumes(): Promise<VolumeSummary[]> {
    const r = await this.call<{ Volumes: VolumeSummary[] | null }>({ method: 'GET', path: '/volumes' });
    return (r?.Volumes ?? []).slice().sort((a, b) => a.Name.localeCompare(b.Name));
  }

  // --- settings (Berth's admin API)

  async settings(): Promise<SettingsRead> {
    const r = await this.backend.request({ method: 'GET', path: '/berth/v1/settings' });
    const doc = parse<SettingsDocument>(r);
    return { doc: doc ?? {}, etag: r.headers['etag'] ?? '*', path: r.headers['berth-settings-path'] };
  }

  validateSettings(doc: SettingsDocument): Promise<ValidationReport> {
    return this.call({ method: 'POST', path: '/berth/v1/settings/validate', body: doc });
  }

  /** Replaces the settings document, if it is still the version `etag` names. */
  putSettings(doc: SettingsDocument, etag: string): Promise<SettingsWrite> {
    return this.writeSettings('PUT', doc, etag);
  }

  /** A JSON merge patch (RFC 7396: `null` removes a key), if the document is still `etag`. */
  patchSettings(patch: Record<string, unknown>, etag: string): Promise<SettingsWrite> {
    return this.writeSettings('PATCH', patch, etag);
  }

  private async writeSettings(method: 'PUT' | 'PATCH', doc: unknown, etag: string): Promise<SettingsWrite> {
    const r = await this.backend.request({ method, path: '/berth/v1/settings', headers: { 'If-Match': etag }, body: doc });
    const body = (() => {
      try {
        return JSON.parse(r.text) as Record<string, unknown>;
      } catch {
        return { message: r.text } as Record<string, unknown>;
      }
    })();
    if (r.status === 200) {
      return {
        ok: true,
        etag: r.headers['etag'] ?? String(body.etag ?? '*'),
        doc: (body.settings ?? (method === 'PUT' ? doc : {})) as SettingsDocument,
        message: String(body.message ?? 'saved'),
        restartRequired: (body.restartRequired as string[]) ?? [],
      };
    }
    if (r.status === 400 && Array.isArray(body.errors)) {
      return { ok: false, kind: 'invalid', message: String(body.message ?? ''), errors: body.errors as FieldError[] };
    }
    if (r.status === 412) {
      return { ok: false, kind: 'conflict', message: String(body.message ?? 'the settings changed meanwhile'), etag: String(body.etag ?? r.headers['etag'] ?? '') };
    }
    throw EngineError.fromResponse(r.status, r.text);
  }

  /**
   * Restarts the VM with the settings' `vm` values. Rejects with an EngineError: 409 on the
   * direct backend (no VM), 400 when the backend refuses (a smaller disk).
   */
  restartVm(): Promise<RestartVmResult> {
    return this.call({ method: 'POST', path: '/berth/v1/engine/restart-vm' });
  }

  testMirror(url: string, image?: string): Promise<MirrorProbe> {
    return this.call({ method: 'POST', path: '/berth/v1/registries/test-mirror', body: { url, image: image || undefined } });
  }
}

/**
 * `name[:tag][@digest]` → `fromImage`/`tag` for `POST /images/create`. A colon in the last path
 * component is the tag (a colon before a slash is a registry port).
 */
export function splitReference(ref: string): { image: string; tag?: string } {
  const r = ref.trim();
  if (r.includes('@')) return { image: r };
  const slash = r.lastIndexOf('/');
  const colon = r.lastIndexOf(':');
  if (colon > slash) return { image: r.slice(0, colon), tag: r.slice(colon + 1) };
  return { image: r, tag: 'latest' };
}
