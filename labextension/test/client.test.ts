import { describe, expect, it } from 'vitest';

import {
  ApiError,
  apiUrl,
  AtomscaleClient,
  clampPerPage,
  errorMessage,
  joinUrl,
  Requester,
} from '../src/client';

/** A requester that records calls and answers from a queue. */
function fake(...answers: Array<Response | Error>): {
  calls: string[];
  inits: RequestInit[];
  request: Requester;
} {
  const calls: string[] = [];
  const inits: RequestInit[] = [];
  const request: Requester = async (url, init) => {
    calls.push(url);
    inits.push(init);
    const a = answers.shift();
    if (!a) {
      throw new Error('no answer queued');
    }
    if (a instanceof Error) {
      throw a;
    }
    return a;
  };
  return { calls, inits, request };
}

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

describe('URL building', () => {
  it('joins base and path with single slashes', () => {
    expect(joinUrl('http://h/user/ann/', '/atomscale/api/v1/', 'runs')).toBe(
      'http://h/user/ann/atomscale/api/v1/runs',
    );
    expect(joinUrl('/', 'a')).toBe('/a');
  });

  it('puts endpoints under the base URL', () => {
    expect(apiUrl('http://127.0.0.1:8888/', ['status'])).toBe(
      'http://127.0.0.1:8888/atomscale/api/v1/status',
    );
    expect(apiUrl('http://h/user/ann/', ['runs'])).toBe('http://h/user/ann/atomscale/api/v1/runs');
  });

  it('encodes each path segment', () => {
    expect(apiUrl('/', ['runs', 'r/1 #2', 'process'])).toBe(
      '/atomscale/api/v1/runs/r%2F1%20%232/process',
    );
  });

  it('leaves out empty parameters and encodes the rest', () => {
    const url = apiUrl('/', ['runs'], {
      q: 'GaAs & AlAs',
      sample: '',
      project: undefined,
      status: null,
      page: 2,
      per_page: 50,
    });
    const u = new URL(url, 'http://x');
    expect(u.pathname).toBe('/atomscale/api/v1/runs');
    expect(u.searchParams.get('q')).toBe('GaAs & AlAs');
    expect(u.searchParams.get('page')).toBe('2');
    expect(u.searchParams.has('sample')).toBe(false);
    expect(u.searchParams.has('project')).toBe(false);
    expect(u.searchParams.has('status')).toBe(false);
  });

  it('has no query string when no parameter is set', () => {
    expect(apiUrl('/', ['runs'], { q: '' })).toBe('/atomscale/api/v1/runs');
  });

  it('clamps the page size to the server limit', () => {
    expect(clampPerPage(10_000)).toBe(500);
    expect(clampPerPage(0)).toBe(1);
    expect(clampPerPage(NaN)).toBe(50);
    expect(clampPerPage(25.7)).toBe(25);
  });
});

describe('error mapping', () => {
  it('prefers the server message', () => {
    const e = errorMessage(
      404,
      JSON.stringify({ message: 'no run named r9', reason: 'Not Found' }),
    );
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(404);
    expect(e.reason).toBe('Not Found');
    expect(e.message).toBe('no run named r9 (HTTP 404)');
    expect(e.fromServer).toBe(true);
  });

  it('tells a page of the server from an answer of the API', () => {
    const e = errorMessage(404, '<html><title>404 : Not Found</title></html>');
    expect(e.fromServer).toBe(false);
    expect(e.message).toBe('Not found (HTTP 404)');
  });

  it('explains a status without a body', () => {
    expect(errorMessage(403, '').message).toMatch(/permission/);
    expect(errorMessage(401, '').message).toMatch(/not signed in/);
    expect(errorMessage(503, '').message).toMatch(/key/);
  });

  it('does not show an HTML error page', () => {
    const e = errorMessage(502, '<html><body><h1>Bad Gateway</h1></body></html>');
    expect(e.message).not.toContain('<');
    expect(e.message).toContain('HTTP 502');
  });

  it('uses the reason when there is no message', () => {
    expect(errorMessage(418, JSON.stringify({ reason: 'teapot' })).message).toBe(
      'The request failed: teapot (HTTP 418)',
    );
  });
});

describe('AtomscaleClient', () => {
  it('requests one page of runs with the query', async () => {
    const page = { total: 100000, page: 3, per_page: 50, runs: [{ run_id: 'r1' }] };
    const { calls, request } = fake(json(page));
    const client = new AtomscaleClient('http://h/', request);
    const answer = await client.runs({
      q: 'gan',
      page: 3,
      per_page: 50,
      sort: 'start',
      order: 'desc',
    });
    expect(answer).toEqual(page);
    const u = new URL(calls[0]);
    expect(u.pathname).toBe('/atomscale/api/v1/runs');
    expect(Object.fromEntries(u.searchParams)).toEqual({
      q: 'gan',
      page: '3',
      per_page: '50',
      sort: 'start',
      order: 'desc',
    });
  });

  it('asks for context facets with the field and a stated purpose', async () => {
    const doc = {
      field: 'material_system',
      total: 3,
      unlabelled: 1,
      values: [{ value: 'GaAs', runs: 2 }],
    };
    const { calls, request } = fake(json(doc));
    const answer = await new AtomscaleClient('/', request).contextFacets(
      'material_system',
      'sidebar facet',
    );
    expect(answer).toEqual(doc);
    const u = new URL(calls[0], 'http://x');
    expect(u.pathname).toBe('/atomscale/api/v1/facets/context');
    expect(Object.fromEntries(u.searchParams)).toEqual({
      field: 'material_system',
      purpose: 'sidebar facet',
    });
  });

  it('revalidates instead of adding a cache-busting parameter', async () => {
    const { inits, request } = fake(json({ org: 'acme' }));
    await new AtomscaleClient('/', request).status();
    expect(inits[0].method).toBe('GET');
    expect(inits[0].cache).toBe('no-cache');
  });

  it('never asks for more than the server limit per page', async () => {
    const { calls, request } = fake(json({ total: 0, page: 1, per_page: 500, runs: [] }));
    await new AtomscaleClient('/', request).runs({ per_page: 100000 });
    expect(new URL(calls[0], 'http://x').searchParams.get('per_page')).toBe('500');
  });

  it('asks for a downsampled channel', async () => {
    const frame = { columns: ['run_id', 'time', 'channel', 'value', 'unit'], data: [] };
    const { calls, request } = fake(json(frame));
    await new AtomscaleClient('/', request).process('r 1', ['T_sub', 'rate'], 200);
    const u = new URL(calls[0], 'http://x');
    expect(u.pathname).toBe('/atomscale/api/v1/runs/r%201/process');
    expect(u.searchParams.get('channels')).toBe('T_sub,rate');
    expect(u.searchParams.get('max_points')).toBe('200');
    expect(u.searchParams.get('format')).toBe('json');
  });

  it('rejects an error status with a readable ApiError', async () => {
    const { request } = fake(json({ message: 'org key unavailable' }, 503));
    await expect(new AtomscaleClient('/', request).status()).rejects.toMatchObject({
      name: 'ApiError',
      status: 503,
      message: 'org key unavailable (HTTP 503)',
    });
  });

  it('turns a network failure into status 0', async () => {
    const { request } = fake(new TypeError('Failed to fetch'));
    await expect(new AtomscaleClient('/', request).status()).rejects.toMatchObject({
      status: 0,
      message: expect.stringMatching(/Cannot reach/),
    });
  });

  it('lets an abort through unchanged', async () => {
    const abort = new DOMException('aborted', 'AbortError');
    const { request } = fake(abort);
    await expect(new AtomscaleClient('/', request).run('r1')).rejects.toBe(abort);
  });

  it('refuses an answer that is not JSON', async () => {
    const { request } = fake(new Response('<html>login</html>', { status: 200 }));
    await expect(new AtomscaleClient('/', request).status()).rejects.toMatchObject({
      message: expect.stringMatching(/not JSON/),
    });
  });
});
