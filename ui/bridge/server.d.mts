// Types of server.mjs for the TypeScript that imports it (the e2e tests).
export interface BridgeOptions {
  socket?: string;
  port?: number;
  dist?: string;
  token?: string | null;
  log?: (line: string) => void;
}
export interface Bridge {
  url: string;
  port: number;
  token: string | null;
  close(): Promise<void>;
}
export function startBridge(opts?: BridgeOptions): Promise<Bridge>;
export function defaultSocket(): string;
