import { describe, expect, it } from 'vitest';
import { createBody, parsePortSpec, splitCommand, validName } from '../src/lib/api/runspec';
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
});
