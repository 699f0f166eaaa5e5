import { describe, expect, it } from 'vitest';
import { cleanPath, createBody, parsePortSpec, splitCommand, validName, validateVolumes, volumeBinds, volumeKind } from '../src/lib/api/runspec';
import { splitReference } from '../src/lib/api/docker';

describe('run options', () => {
  it('parses -p forms', () => {
    expect(parsePortSpec('80')).toEqual({ containerPort: 80, proto: 'tcp', hostIp: undefined, hostPort: undefined });
    expect(parsePortSpec('8080:80')).toMatchObject({ hostPort: '8080', containerPort: 80 });
    expect(parsePortSpec('127.0.0.1:8080:80/udp')).toMatchObject({ hostIp: '127.0.0.1', hostPort: '8080', proto: 'udp' });
    expect(parsePortSpec('[::1]:8080:80')).toMatchObject({ hostIp: '::1', hostPort: '8080' });
    expect(() => parsePortSpec('80:http')).toThrow(/not a number/);
    expect(() => parsePortSpec('70000')).toThrow(/out of range/);
    expect(() => parsePortSpec('80/icmp')).toThrow(/tcp, udp or sctp/);
  });

  it('builds the create body', () => {
    expect(createBody({ image: 'busybox', ports: ['8080:80', ''], env: ['A=1'], cmd: ['sleep', '9'] })).toEqual({
      Image: 'busybox',
      Env: ['A=1'],
      ExposedPorts: { '80/tcp': {} },
      HostConfig: { PortBindings: { '80/tcp': [{ HostIp: '', HostPort: '8080' }] } },
      Cmd: ['sleep', '9'],
    });
    expect(() => createBody({ image: 'x', ports: [], env: ['1A=x'] })).toThrow(/not a variable name/);
  });

  it('splits a command line with quotes', () => {
    expect(splitCommand(`sh -c "echo 'hi there'; sleep 1"`)).toEqual(['sh', '-c', "echo 'hi there'; sleep 1"]);
    expect(splitCommand(`echo a\\ b '' "x\\"y"`)).toEqual(['echo', 'a b', '', 'x"y']);
    expect(() => splitCommand('echo "open')).toThrow(/unclosed/);
  });

  it('checks names and splits references', () => {
    expect(validName('web-1')).toBe(true);
    expect(validName('-x')).toBe(false);
    expect(splitReference('busybox')).toEqual({ image: 'busybox', tag: 'latest' });
    expect(splitReference('127.0.0.1:15000/berth/hello:v2s2')).toEqual({ image: '127.0.0.1:15000/berth/hello', tag: 'v2s2' });
    expect(splitReference('127.0.0.1:15000/berth/hello')).toEqual({ image: '127.0.0.1:15000/berth/hello', tag: 'latest' });
    expect(splitReference('busybox@sha256:abc')).toEqual({ image: 'busybox@sha256:abc' });
  });

  it('tells named volumes from host paths', () => {
    expect(volumeKind('data')).toBe('volume');
    expect(volumeKind('/srv/data')).toBe('bind');
    expect(volumeKind('./data')).toBe('bind');
    expect(volumeKind('~/data')).toBe('bind');
    expect(volumeKind('  ')).toBe('empty');
    expect(cleanPath('/a//b/./c/')).toBe('/a/b/c');
    expect(cleanPath('/a/../')).toBe('/');
  });

  it('validates volume rows with a message per field', () => {
    const row = (source: string, target: string, readOnly = false) => ({ source, target, readOnly });
    expect(validateVolumes([row('data', '/data'), row('/srv', '/srv', true), row('', '')])).toEqual([{}, {}, {}]);
    const e = validateVolumes([
      row('data', 'data'),
      row('./rel', '/x'),
      row('-bad', '/y'),
      row('', '/z'),
      row('v2', ''),
      row('v3', '/data/'),
      row('v4', '/'),
      row('a:b', '/w:x'),
    ]);
    expect(e[0]).toEqual({ target: 'The path in the container must be absolute (start with /): "data"' });
    expect(e[1].source).toMatch(/host path must be absolute/);
    expect(e[2].source).toMatch(/not a volume name/);
    expect(e[3]).toEqual({ source: 'Name a volume or give an absolute host path' });
    expect(e[4]).toEqual({ target: 'The path in the container is needed' });
    expect(e[6].target).toMatch(/cannot be a mount point/);
    expect(e[7]).toEqual({ source: 'A source cannot contain ":"', target: 'The path in the container cannot contain ":"' });
    // Duplicate targets (as cleaned): the second names the first.
    const d = validateVolumes([row('a1', '/data'), row('/srv', '/data/'), row('b1', '//data')]);
    expect(d[0]).toEqual({});
    expect(d[1].target).toBe('/data is already the target of volume 1');
    expect(d[2].target).toBe('/data is already the target of volume 1');
    // "data" (row 1) above is not absolute, so "/data/" of row 6 is not a duplicate of it.
    expect(e[5]).toEqual({});
  });

  it('maps volumes to HostConfig.Binds as docker run -v sends them', () => {
    const body = createBody({
      image: 'busybox',
      ports: [],
      env: [],
      volumes: [
        { source: ' data ', target: '/data', readOnly: false },
        { source: '/srv/www', target: '/usr/share/www', readOnly: true },
        { source: '', target: '', readOnly: true },
      ],
    });
    expect(body.HostConfig).toEqual({ PortBindings: {}, Binds: ['data:/data', '/srv/www:/usr/share/www:ro'] });
    // No volumes: no Binds key at all.
    expect(createBody({ image: 'x', ports: [], env: [] }).HostConfig).toEqual({ PortBindings: {} });
    expect(() => volumeBinds([{ source: 'data', target: 'rel', readOnly: false }])).toThrow(/volume 1: .*absolute/);
  });
});
