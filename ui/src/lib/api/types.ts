// The Docker Engine API and Berth admin API shapes the UI reads.

// The Docker answers berthd serialises through typed Rust structs (crates/agent/src/docker/
// model.rs: the container and image lists, image history, events) are generated from those
// types, through the JSON Schema schemars writes (docs/docker-api.schema.json): `npm run gen`,
// docs/ui.md. `Wire` has them exactly as sent. The UI's names below are those types with the
// fields it needs required and the rest optional (`Reads`), so the stores, test fixtures and
// stand-in engines need not fill in what nothing reads; a field berthd renames or drops breaks
// the UI's compile wherever it is read. The hand-written shapes further down are the answers
// berthd still builds as JSON values (only the fields the UI uses).
export type * as Wire from './generated/docker';
import type * as Wire from './generated/docker';

/** `T` with the fields `K` required and the others optional. */
export type Reads<T, K extends keyof T> = Pick<T, K> & Partial<Omit<T, K>>;

export type { PortSummary, ImageHistoryItem } from './generated/docker';

/** An item of `GET /containers/json`. */
export type ContainerSummary = Reads<Wire.ContainerSummary, 'Id' | 'Names' | 'Image' | 'Created' | 'State' | 'Status' | 'Ports'>;

/** An item of `GET /images/json`; the names may also be null (other engines' answers). */
export type ImageSummary = Reads<Omit<Wire.ImageSummary, 'RepoTags' | 'RepoDigests'>, 'Id' | 'Created' | 'Size'> & {
  RepoTags: string[] | null;
  RepoDigests: string[] | null;
};

/** One message of `GET /events`. */
export type DockerEvent = Reads<Wire.EventMessage, 'Type' | 'Action' | 'Actor' | 'time'>;

/**
 * The fields of Docker's stats object used here, all optional (other engines leave some out).
 * berthd's is `Wire.ContainerStats`; `StatsFit` below fails the compile if a field named here
 * is not in it.
 */
export interface DockerStats {
  cpu_stats?: { cpu_usage?: { total_usage?: number; percpu_usage?: number[] | null }; system_cpu_usage?: number; online_cpus?: number };
  precpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number };
  memory_stats?: { usage?: number; limit?: number; stats?: Record<string, number> };
}

/** `true` when every key of `A`, at every depth, is one of `B`'s (arrays item by item). */
export type KeysWithin<A, B> = [A] extends [readonly (infer X)[]]
  ? [B] extends [readonly (infer Y)[]]
    ? KeysWithin<X, Y>
    : false
  : [A] extends [object]
    ? [B] extends [object]
      ? [Exclude<keyof A, keyof B>] extends [never]
        ? false extends { [K in keyof A & keyof B]-?: KeysWithin<NonNullable<A[K]>, NonNullable<B[K]>> }[keyof A & keyof B]
          ? false
          : true
        : false
      : false
    : true;
const statsFit: KeysWithin<DockerStats, Wire.ContainerStats> = true;
void statsFit;

/** One line of Docker's JSON progress stream (`POST /images/create`). */
export interface ProgressMessage {
  status?: string;
  id?: string;
  progress?: string;
  progressDetail?: { current?: number; total?: number };
  error?: string;
  errorDetail?: { message?: string; code?: number };
  aux?: unknown;
}

export interface EngineState {
  Backend: string;
  State: string;
  Health?: unknown;
  Core?: { Software?: string; Version?: string; Error?: string } | null;
  /** The VM's resources on VM backends; null on the direct backend. */
  Resources?: VmResources | null;
}

export interface FieldError {
  path: string;
  message: string;
}

export interface ValidationReport {
  valid: boolean;
  errors: FieldError[];
  warnings: unknown[];
}

// The settings document's types are generated from the Rust types (through the JSON Schema
// schemars writes): `npm run gen`, docs/ui.md.
export type { Settings as SettingsDocument, RegistrySettings, VmSettings, Mirror } from './generated/settings';
import type { Settings as SettingsDocument } from './generated/settings';

/** `GET /berth/v1/engine`'s `Resources` (null on the direct backend). */
export interface VmResources {
  Cpus: number;
  MemoryMiB: number;
  DiskGiB: number;
}

/** `POST /berth/v1/engine/restart-vm`'s answer. */
export interface RestartVmResult {
  Resources: VmResources;
  TookMs: number;
}

export interface SettingsRead {
  doc: SettingsDocument;
  etag: string;
  path?: string;
}

export type SettingsWrite =
  | { ok: true; etag: string; doc: SettingsDocument; message: string; restartRequired: string[] }
  | { ok: false; kind: 'invalid'; message: string; errors: FieldError[] }
  | { ok: false; kind: 'conflict'; message: string; etag: string };

export interface MirrorProbe {
  url: string;
  reachable: boolean;
  status?: number | null;
  tls?: string;
  auth?: string | null;
  latencyMs?: number | null;
  apiVersion?: string | null;
  image?: { repository?: string; found?: boolean; digest?: string | null; error?: string | null } | null;
  error?: string | null;
}

export interface RunOptions {
  image: string;
  name?: string;
  /** "8080:80", "127.0.0.1:8080:80/tcp", "80" */
  ports: string[];
  /** "KEY=value" */
  env: string[];
  cmd?: string[];
}
