import { base } from '$app/paths';

// The console speaks only the public REST API, as the signed-in user: the session cookie travels
// with every same-origin request and unsafe methods carry the CSRF token the session handed out.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly field?: string
  ) {
    super(message);
  }
}

let csrfToken = '';

export function setCsrfToken(token: string): void {
  csrfToken = token;
}

type Query = Record<string, string | number | boolean | undefined | null>;

export function withQuery(path: string, query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

export async function api<T = any>(method: string, path: string, body?: unknown, query?: Query): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const response = await fetch(withQuery(path, query), {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body)
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (response.status === 401 && !path.startsWith('/v1/sessions')) {
    location.assign(`${base}/sign-in`); // the session ended (signed out elsewhere, expired)
  }
  if (!response.ok) {
    const details: any[] = data.details ?? [];
    const info = details.find((d) => String(d['@type']).endsWith('ErrorInfo'));
    const violation = details.find((d) => String(d['@type']).endsWith('BadRequest'))?.fieldViolations?.[0];
    throw new ApiError(response.status, info?.reason ?? 'HTTP_' + response.status, data.message ?? response.statusText,
      violation?.field);
  }
  return data as T;
}

export const get = <T = any>(path: string, query?: Query) => api<T>('GET', path, undefined, query);
export const post = <T = any>(path: string, body: unknown = {}, query?: Query) => api<T>('POST', path, body, query);
export const patch = <T = any>(path: string, body: unknown, query?: Query) => api<T>('PATCH', path, body, query);
export const del = <T = any>(path: string) => api<T>('DELETE', path);

/** Every page of a keyset-paginated list, up to `limit` items; no further page once `stop()` says so. */
export async function listAll<T>(path: string, key: string, query: Query = {}, limit = 2000,
                                 stop: () => boolean = () => false): Promise<T[]> {
  const items: T[] = [];
  let pageToken = '';
  do {
    const page: any = await get(path, { ...query, pageSize: 500, pageToken });
    items.push(...(page[key] ?? []));
    pageToken = page.nextPageToken ?? '';
  } while (pageToken && items.length < limit && !stop());
  return items;
}
