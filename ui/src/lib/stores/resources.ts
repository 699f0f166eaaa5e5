// The Resources pane's model: the settings' `vm` values as form fields (memory in MiB or GiB),
// checked against the schema's ranges and the disk's current size (it only grows), and the
// merge patch Apply sends.
import type { FieldError, SettingsDocument, VmResources } from '../api/types';

export type MemoryUnit = 'MiB' | 'GiB';

export interface ResourcesForm {
  /** Empty: the default (berthd's flags, else the backend's). */
  cpus: string;
  memory: string;
  memoryUnit: MemoryUnit;
  disk: string;
}

export const LIMITS = {
  cpus: { min: 1, max: 256 },
  memoryMiB: { min: 256, max: 1048576 },
  diskGiB: { min: 1, max: 16384 },
};

export function fromDocument(doc: SettingsDocument): ResourcesForm {
  const vm = doc.vm ?? {};
  const mem = vm.memory ?? null;
  const gib = mem !== null && mem % 1024 === 0;
  return {
    cpus: vm.cpus == null ? '' : String(vm.cpus),
    memory: mem === null ? '' : String(gib ? mem / 1024 : mem),
    memoryUnit: mem === null || gib ? 'GiB' : 'MiB',
    disk: vm.disk == null ? '' : String(vm.disk),
  };
}

/** The unit changed: the same amount in the other unit (whole MiB; GiB with up to 3 decimals). */
export function convertMemory(value: string, from: MemoryUnit, to: MemoryUnit): string {
  if (from === to || value.trim() === '') return value;
  const n = Number(value);
  if (!Number.isFinite(n)) return value;
  if (to === 'MiB') return String(Math.round(n * 1024));
  return String(Math.round((n / 1024) * 1000) / 1000);
}

export interface ResourcesValues {
  cpus: number | null;
  memory: number | null;
  disk: number | null;
}

/** The form's values (MiB for memory), and errors by the settings' JSON path. */
export function check(form: ResourcesForm, current: VmResources | null | undefined): { values: ResourcesValues; errors: FieldError[] } {
  const errors: FieldError[] = [];
  const num = (text: string, path: string, integer: boolean): number | null => {
    const t = text.trim();
    if (t === '') return null;
    const n = Number(t);
    if (!Number.isFinite(n)) {
      errors.push({ path, message: 'not a number' });
      return null;
    }
    if (integer && !Number.isInteger(n)) {
      errors.push({ path, message: 'must be a whole number' });
      return null;
    }
    return n;
  };
  const cpus = num(form.cpus, 'vm.cpus', true);
  let memory = num(form.memory, 'vm.memory', form.memoryUnit === 'MiB');
  if (memory !== null && form.memoryUnit === 'GiB') {
    const mib = memory * 1024;
    if (!Number.isInteger(mib)) errors.push({ path: 'vm.memory', message: 'must be a whole number of MiB' });
    memory = Number.isInteger(mib) ? mib : null;
  }
  const disk = num(form.disk, 'vm.disk', true);
  const range = (v: number | null, path: string, l: { min: number; max: number }, unit: string) => {
    if (v === null) return;
    if (v < l.min || v > l.max) errors.push({ path, message: `must be between ${l.min} and ${l.max}${unit}` });
  };
  range(cpus, 'vm.cpus', LIMITS.cpus, '');
  range(memory, 'vm.memory', LIMITS.memoryMiB, ' MiB');
  range(disk, 'vm.disk', LIMITS.diskGiB, ' GiB');
  if (disk !== null && current && disk < current.DiskGiB) {
    errors.push({ path: 'vm.disk', message: `the disk is ${current.DiskGiB} GiB now and cannot shrink: ${current.DiskGiB} GiB or more` });
  }
  return { values: { cpus, memory, disk }, errors };
}

/** The document with `vm` replaced by `values` (left-out values removed). */
export function withVm(doc: SettingsDocument, v: ResourcesValues): SettingsDocument {
  const out: SettingsDocument = { ...doc };
  const vm: NonNullable<SettingsDocument['vm']> = {};
  if (v.cpus !== null) vm.cpus = v.cpus;
  if (v.memory !== null) vm.memory = v.memory;
  if (v.disk !== null) vm.disk = v.disk;
  if (Object.keys(vm).length) out.vm = vm;
  else delete out.vm;
  return out;
}

/** The JSON merge patch (RFC 7396) that turns the document's `vm` into `values`. */
export function vmPatch(doc: SettingsDocument, v: ResourcesValues): Record<string, unknown> {
  const before = doc.vm ?? {};
  const vm: Record<string, number | null> = {};
  for (const k of ['cpus', 'memory', 'disk'] as const) {
    const now = v[k];
    const was = before[k] ?? null;
    if (now !== was) vm[k] = now;
  }
  return Object.keys(vm).length ? { vm } : {};
}

export function formatMiB(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

/** The `vm` keys whose saved value the running VM does not have yet (a restart applies them). */
export function pendingRestart(doc: SettingsDocument, current: VmResources | null | undefined): string[] {
  if (!current) return [];
  const vm = doc.vm ?? {};
  const out: string[] = [];
  if (vm.cpus != null && vm.cpus !== current.Cpus) out.push('vm.cpus');
  if (vm.memory != null && vm.memory !== current.MemoryMiB) out.push('vm.memory');
  if (vm.disk != null && vm.disk > current.DiskGiB) out.push('vm.disk');
  return out;
}
