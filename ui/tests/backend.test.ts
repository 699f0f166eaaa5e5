import { describe, expect, it, vi } from 'vitest';
import { HttpBackend } from '../src/lib/backend/http';
import { EngineError, pathWithQuery } from '../src/lib/backend/types';

const enc = (s: string) => new TextEncoder().encode(s);

function streamingResponse(chunks: string[], status = 200, headers: Record<string, string> = {}) {
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const x of chunks) c.enqueue(enc(x));
      c.close();
    },
  });
  return new Response(body, { status, headers });
}

describe('HttpBackend', () => {
  it('sends the token and JSON body to /engine', async () => {
    const f = vi.fn(async (..._args: unknown[]) => new Response('{"ok":true}', { status: 201, headers: { ETag: '"e1"' } }));
    const b = new HttpBackend({ token: 't0k', fetch: f as unknown as typeof fetch });
    const r = await b.request({ method: 'PUT', path: '/berth/v1/settings', headers: { 'If-Match': '"e0"' }, body: { a: 1 }, query: { x: 'a b', y: undefined } });
    expect(r).toEqual({ status: 201, headers: { 'content-type': 'text/plain;charset=UTF-8', etag: '"e1"' }, text: '{"ok":true}' });
    const [url, init] = f.mock.calls[0] as [string, RequestInit];
    expect(url).toBe('/engine/berth/v1/settings?x=a%20b');
    expect(init.headers).toEqual({ 'If-Match': '"e0"', 'X-Berth-Token': 't0k', 'Content-Type': 'application/json' });
    expect(init.body).toBe('{"a":1}');
  });

  it('streams chunks as they come and reports the head', async () => {
    const f = vi.fn(async () => streamingResponse(['{"a":', '1}\n'], 200, { 'Content-Type': 'application/json' }));
    const b = new HttpBackend({ fetch: f as unknown as typeof fetch });
    const chunks: string[] = [];
    let ct = '';
    await b.stream({ method: 'GET', path: '/events' }, { onOpen: (h) => (ct = h.headers['content-type']), onChunk: (c) => chunks.push(new TextDecoder().decode(c)) });
    expect(chunks).toEqual(['{"a":', '1}\n']);
    expect(ct).toBe('application/json');
  });

  it('rejects a stream with an error status with Docker\'s message', async () => {
    const f = vi.fn(async () => new Response('{"message":"page not found: GET /events"}', { status: 404 }));
    const b = new HttpBackend({ fetch: f as unknown as typeof fetch });
    const err = await b.stream({ method: 'GET', path: '/events' }, { onChunk: () => {} }).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.status).toBe(404);
    expect(err.message).toBe('page not found: GET /events');
  });

  it('reports an unreachable bridge as status 0', async () => {
    const b = new HttpBackend({ fetch: (async () => { throw new TypeError('Failed to fetch'); }) as unknown as typeof fetch });
    await expect(b.request({ method: 'GET', path: '/_ping' })).rejects.toMatchObject({ status: 0 });
  });

  it('encodes queries', () => {
    expect(pathWithQuery('/images/create', { fromImage: '127.0.0.1:15000/berth/hello', tag: 'latest', n: null })).toBe(
      '/images/create?fromImage=127.0.0.1%3A15000%2Fberth%2Fhello&tag=latest',
    );
  });
});
