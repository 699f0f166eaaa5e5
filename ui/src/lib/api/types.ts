// The Docker Engine API and Berth admin API shapes the UI reads (only the fields it uses).

export interface PortSummary {
  IP?: string;
  PrivatePort: number;
  PublicPort?: number;
  Type: string;
}

export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  ImageID?: string;
  Command?: string;
  Created: number;
  State: string;
  Status: string;
  Ports: PortSummary[];
  Labels?: Record<string, string>;
}

export interface ImageSummary {
  Id: string;
  ParentId?: string;
  RepoTags: string[] | null;
  RepoDigests: string[] | null;
  Created: number;
  Size: number;
  Containers?: number;
  Labels?: Record<string, string> | null;
}

/** The fields of Docker's stats object used here. */
export interface DockerStats {
  cpu_stats?: { cpu_usage?: { total_usage?: number; percpu_usage?: number[] | null }; system_cpu_usage?: number; online_cpus?: number };
  precpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number };
  memory_stats?: { usage?: number; limit?: number; stats?: Record<string, number> };
}

/** One layer of `GET /images/{name}/history`, newest first. */
export interface ImageHistoryItem {
  Id: string;
  Created: number;
  CreatedBy: string;
  Tags: string[] | null;
  Size: number;
  Comment: string;
}

/** One object of `GET /events`, in Docker's shape. */
export interface DockerEvent {
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes?: Record<string, string> };
  scope?: string;
  time: number;
  timeNano?: number;
  // The pre-1.22 fields some engines still send.
  status?: string;
  id?: string;
  from?: string;
}

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
