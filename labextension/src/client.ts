/**
 * A small client for the server extension's REST API (`<base_url>/atomscale/api/v1/`).
 *
 * It knows nothing of JupyterLab: the function that performs a request is injected, so the plugin
 * passes one built on `ServerConnection.makeRequest` (which adds the token and XSRF headers) and
 * the unit tests pass a fake.
 */

import type { IOrgConfigDoc } from './orgconfig';
import type { IRheed } from './rheedplot';

/** The path below the server's base URL where the API lives. */
export const API_PREFIX = 'atomscale/api/v1/';

/** Performs one HTTP request; resolves with the response whatever its status. */
export type Requester = (url: string, init: RequestInit) => Promise<Response>;

/** A query-string value; `undefined`, `null` and `''` leave the parameter out. */
export type QueryValue = string | number | boolean | undefined | null;

/** GET `status`. */
export interface IStatus {
  org: string;
  region: string;
  user?: string;
  role?: string;
  /** The user's permissions in the org (e.g. `data:read`, `context:join`). */
  permissions?: string[];
  key: { version: number; fingerprint: string };
  categories: Record<string, { rows: number; tables?: Record<string, number> }>;
}

/** One row of GET `runs`. */
export interface IRun {
  run_id: string;
  project?: string | null;
  sample?: string | null;
  instrument?: string | null;
  method?: string | null;
  operator?: string | null;
  start?: string | null;
  end?: string | null;
  status?: string | null;
}

/** GET `runs`: one page of runs. */
export interface IRunsPage {
  total: number;
  page: number;
  per_page: number;
  runs: IRun[];
}

/** One metrology item listed in a run's detail. */
export interface IMetrologyRef {
  item_id: string;
  technique: string;
  time?: string | null;
}

/** GET `runs/{run_id}`. */
export interface IRunDetail extends IRun {
  channels: { process: string[]; tool_state: string[] };
  metrology: IMetrologyRef[];
  rows?: { process?: number; tool_state?: number };
}

/** A frame as JSON: column names and row-major data. */
export interface IFrame {
  columns: string[];
  data: unknown[][];
}

/** GET `facets`: the distinct values of the run catalogue's categorical columns. */
export interface IFacets {
  total: number;
  project: string[];
  instrument: string[];
  method: string[];
  operator: string[];
  status: string[];
}

/** GET `facets/context`: runs per value of a context label (needs `context:join`). */
export interface IContextFacets {
  field: string;
  total: number;
  unlabelled: number;
  values: { value: string; runs: number }[];
}

/** The context labels the sidebar offers as facets (joined only with `context:join`). */
export const CONTEXT_FACETS = ['material_system'] as const;

/** The purpose the sidebar states when it joins context labels (recorded in the audit log). */
export const SIDEBAR_PURPOSE = 'sidebar facet';

/** Filters, search and paging of GET `runs`. */
export interface IRunQuery {
  q?: string;
  project?: string;
  /** A context filter: needs `context:join` and a `purpose`. */
  material_system?: string;
  purpose?: string;
  sample?: string;
  instrument?: string;
  method?: string;
  status?: string;
  start?: string;
  end?: string;
  sort?: string;
  order?: 'asc' | 'desc';
  page?: number;
  per_page?: number;
}

/** The largest page the server hands out (documented limit). */
export const MAX_PER_PAGE = 500;

/**
 * An API call that failed, with a message written for the person looking at the panel.
 *
 * `status` is the HTTP status (0 when the server could not be reached) and `reason` the
 * server's short reason, when it sent one.
 */
export class ApiError extends Error {
  readonly status: number;
  readonly reason: string;
  /** Whether the message is the API's own (false: written here from the status). */
  readonly fromServer: boolean;

  constructor(status: number, message: string, reason = '', fromServer = false) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.reason = reason;
    this.fromServer = fromServer;
  }
}

/** Join a base URL and path segments with exactly one slash between each. */
export function joinUrl(base: string, ...parts: string[]): string {
  let url = base.replace(/\/+$/, '');
  for (const part of parts) {
    const p = part.replace(/^\/+|\/+$/g, '');
    if (p) {
      url += '/' + p;
    }
  }
  return url;
}

/**
 * The URL of an API endpoint.
 *
 * `segments` are encoded one by one (a run id may hold `/` or `#`); `params` with an empty value
 * are left out, so the server applies its own defaults.
 */
export function apiUrl(
  baseUrl: string,
  segments: string[],
  params: Record<string, QueryValue> = {},
): string {
  const path = segments.map((s) => encodeURIComponent(s)).join('/');
  let url = joinUrl(baseUrl, API_PREFIX, path);
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') {
      continue;
    }
    query.append(key, String(value));
  }
  const qs = query.toString();
  if (qs) {
    url += '?' + qs;
  }
  return url;
}

const STATUS_HINTS: Record<number, string> = {
  400: 'The request was not accepted',
  401: 'You are not signed in (or your session expired); reload the page to sign in again',
  403: 'You do not have permission to see this',
  404: 'Not found',
  409: 'The request conflicts with the current state',
  413: 'The request is too large',
  429: 'Too many requests; wait a moment and try again',
  500: 'The server failed to answer',
  502: 'The server is unreachable behind its proxy',
  503: 'The data is unavailable right now (the organization key could not be obtained)',
  504: 'The server took too long to answer',
};

/**
 * Turn an error response into a readable message.
 *
 * Prefers the server's own JSON `message`; falls back to a hint for the status. Never returns
 * an HTML page or a stack trace.
 */
export function errorMessage(status: number, bodyText: string): ApiError {
  let message = '';
  let reason = '';
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body === 'object') {
      if (typeof body.message === 'string') {
        message = body.message.trim();
      }
      if (typeof body.reason === 'string') {
        reason = body.reason.trim();
      }
    }
  } catch {
    // Not JSON (a proxy's HTML page, for instance): the status hint is more useful than the body.
  }
  const hint = STATUS_HINTS[status] ?? (status >= 500 ? 'The server failed' : 'The request failed');
  const fromServer = message !== '';
  if (!message) {
    message = reason && reason.toLowerCase() !== hint.toLowerCase() ? `${hint}: ${reason}` : hint;
  }
  return new ApiError(status, `${message} (HTTP ${status})`, reason, fromServer);
}

/** Clamp a page size to what the server accepts. */
export function clampPerPage(n: number): number {
  if (!Number.isFinite(n)) {
    return 50;
  }
  return Math.min(MAX_PER_PAGE, Math.max(1, Math.floor(n)));
}

/** Calls of the REST API; every method resolves with parsed JSON or rejects with `ApiError`. */
export class AtomscaleClient {
  readonly baseUrl: string;
  private _request: Requester;

  constructor(baseUrl: string, request: Requester) {
    this.baseUrl = baseUrl;
    this._request = request;
  }

  /** GET an endpoint and parse its JSON answer. */
  async get<T>(
    segments: string[],
    params: Record<string, QueryValue> = {},
    signal?: AbortSignal,
  ): Promise<T> {
    const url = apiUrl(this.baseUrl, segments, params);
    let response: Response;
    try {
      // 'no-cache' revalidates every time (the server sends ETags) and, unlike JupyterLab's
      // default 'no-store', adds no cache-busting parameter the API would refuse as unknown.
      response = await this._request(url, { method: 'GET', cache: 'no-cache', signal });
    } catch (e) {
      if ((e as Error)?.name === 'AbortError') {
        throw e;
      }
      throw new ApiError(0, 'Cannot reach the Jupyter server; check that it is still running');
    }
    const text = await response.text();
    if (!response.ok) {
      throw errorMessage(response.status, text);
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(response.status, 'The server sent an answer that is not JSON');
    }
  }

  /** The org, its residency, key and row counts. */
  status(signal?: AbortSignal): Promise<IStatus> {
    return this.get<IStatus>(['status'], {}, signal);
  }

  /** The org's workspace configuration (any member may read it). */
  config(signal?: AbortSignal): Promise<IOrgConfigDoc> {
    return this.get<IOrgConfigDoc>(['config'], {}, signal);
  }

  /** One page of runs (server-side search, sort and paging). */
  runs(query: IRunQuery, signal?: AbortSignal): Promise<IRunsPage> {
    const params: Record<string, QueryValue> = { ...query };
    if (query.per_page !== undefined) {
      params.per_page = clampPerPage(query.per_page);
    }
    return this.get<IRunsPage>(['runs'], params, signal);
  }

  /** One run's record, channels and metrology items. */
  run(runId: string, signal?: AbortSignal): Promise<IRunDetail> {
    return this.get<IRunDetail>(['runs', runId], {}, signal);
  }

  /** Distinct projects, instruments, methods, operators and statuses (for the facet pickers). */
  facets(signal?: AbortSignal): Promise<IFacets> {
    return this.get<IFacets>(['facets'], {}, signal);
  }

  /** Runs per value of a context label, through one audited join stating `purpose`. */
  contextFacets(field: string, purpose: string, signal?: AbortSignal): Promise<IContextFacets> {
    return this.get<IContextFacets>(['facets', 'context'], { field, purpose }, signal);
  }

  /** The server's RHEED analysis of a run, with its trace decimated to `maxPoints`. */
  rheed(runId: string, maxPoints?: number, signal?: AbortSignal): Promise<IRheed> {
    return this.get<IRheed>(['runs', runId, 'rheed'], { max_points: maxPoints }, signal);
  }

  /** A run's process series as a long JSON frame, downsampled to `maxPoints` per channel. */
  process(
    runId: string,
    channels: string[],
    maxPoints?: number,
    signal?: AbortSignal,
  ): Promise<IFrame> {
    return this.get<IFrame>(
      ['runs', runId, 'process'],
      { channels: channels.join(','), max_points: maxPoints, format: 'json' },
      signal,
    );
  }
}
