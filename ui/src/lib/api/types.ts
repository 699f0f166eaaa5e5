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

export interface SettingsDocument {
  'registry-mirrors'?: string[];
  'insecure-registries'?: string[];
  registries?: Record<string, RegistrySettings>;
  [key: string]: unknown;
}

export interface RegistrySettings {
  mirrors?: { url: string }[];
  'mirror-only'?: boolean;
  insecure?: boolean;
  ca?: string;
  [key: string]: unknown;
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
