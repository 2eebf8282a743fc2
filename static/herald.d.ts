// Type declarations for herald.js / herald.mjs (Herald WebSocket gateway client, protocol v1).
// See docs/CLIENT.md.

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/**
 * How the client holds its session (PROTOCOL.md §2, §2.5): a WebSocket, Server-Sent Events
 * (GET /sse) or a fetch stream (POST /stream); on the last two, ops are posted to /emulation.
 */
export type Transport = 'websocket' | 'sse' | 'http-stream';

/** What to do after a close code: see closeAction(). */
export type CloseAction = 'stop' | 'reconnect' | 'refresh_token';

/**
 * Error codes: the protocol's (PROTOCOL.md §2.3) plus the client's own:
 * 'not_connected' (request made while not connected; nothing was sent),
 * 'timeout' (no reply within requestTimeoutMs; the outcome is unknown),
 * 'disconnected' (the connection closed before the reply; the outcome is unknown),
 * 'closed', 'unsubscribed', 'already_subscribed', 'token_expired', 'token_error',
 * 'bad_frame', 'unsupported'.
 */
export type HeraldErrorCode =
  | 'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'conflict'
  | 'limit_exceeded' | 'rate_limited' | 'unavailable' | 'internal'
  | 'not_connected' | 'timeout' | 'disconnected' | 'closed' | 'unsubscribed'
  | 'already_subscribed' | 'token_expired' | 'token_error' | 'bad_frame' | 'unsupported'
  | (string & {});

export class HeraldError extends Error {
  constructor(code: HeraldErrorCode, message?: string, extra?: object);
  readonly code: HeraldErrorCode;
  /** The op of the request that failed, where there was one. */
  readonly op?: string;
  /** For 'closed' errors from connect(): the close code. */
  readonly closeCode?: number;
}

export interface BackoffOptions {
  /** Default 500. */
  baseMs?: number;
  /** Default 30000. */
  maxMs?: number;
}

export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onopen: ((ev: unknown) => void) | null;
}

/** The part of EventSource the client uses. */
export interface EventSourceLike {
  close(): void;
  onmessage: ((ev: { data: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** The part of fetch the client uses (a streaming Response body for http-stream). */
export type FetchLike = (url: string, init: {
  method: string;
  headers: Record<string, string>;
  body?: string;
  cache?: string;
  signal?: AbortSignal;
}) => Promise<{ ok: boolean; status: number; body: ReadableStream<Uint8Array> | null }>;

export interface HeraldOptions {
  /** Connection token (JWT), sent as ?token=. */
  token?: string;
  /** Called before every connection attempt (and so after a 4001 close) for a fresh token. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Per-request timeout. Default 10000. */
  requestTimeoutMs?: number;
  /** App-level ping period. Default: the welcome frame's ping_interval_ms, else 25000. */
  pingIntervalMs?: number;
  backoff?: BackoffOptions;
  /**
   * Transports to use, in order of preference. Default ['websocket', 'sse', 'http-stream'].
   * After two attempts in a row that end before a welcome frame (refused, broken, or no
   * welcome within openTimeoutMs), the next one is tried; after the last, the first again.
   * Transports without an implementation here (no EventSource, no fetch) are skipped.
   */
  transports?: Transport[];
  /**
   * Base URL of the HTTP transports: its path + '/sse', '/stream', '/emulation'. Default:
   * derived from `url` (ws(s) → http(s), the last path segment replaced: wss://h/ws → https://h/sse).
   */
  httpUrl?: string;
  /** An attempt without a welcome frame within this time has failed. Default 5000. */
  openTimeoutMs?: number;
  /**
   * After falling back, the first transport is tried again at the first reconnect after a
   * working fallback connection, once this much time has passed since falling back (at
   * once if that fallback had failed too before it worked: an outage, not a blocked
   * WebSocket). Default 300000 (5 minutes).
   */
  fallbackRetryMs?: number;
  /** WebSocket constructor (tests, Node). Default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** EventSource constructor (tests). Default globalThis.EventSource. */
  EventSource?: new (url: string) => EventSourceLike;
  /** fetch (tests, Node). Default globalThis.fetch. */
  fetch?: FetchLike;
  /** Random source for the jitter, [0, 1). Default Math.random. */
  random?: () => number;
}

export interface WelcomeFrame {
  type: 'welcome';
  session: string;
  node: string;
  ping_interval_ms?: number;
  /** On SSE and http-stream (PROTOCOL.md §2.5): the transport, and the session's secret for /emulation. */
  transport?: 'sse' | 'http-stream';
  key?: string;
  [k: string]: unknown;
}

export interface MessageFrame<T = unknown> {
  type: 'message';
  channel: string;
  data: T;
  offset?: number;
  epoch?: string;
  source?: { stream: string; id: string };
  [k: string]: unknown;
}

export interface PresenceClient {
  session: string;
  user?: string;
  info?: unknown;
}

export interface PresenceFrame {
  type: 'join' | 'leave';
  channel: string;
  client: PresenceClient;
}

export interface SubscribeResult {
  epoch?: string;
  offset?: number;
  recovered?: boolean;
  [k: string]: unknown;
}

export interface GapInfo {
  /**
   * 'recovery_failed': a re-subscribe with recover answered recovered:false (history
   * trimmed, expired, or the epoch changed): reload the state.
   * 'epoch_changed': the channel's epoch changed; offsets restarted.
   * 'missing': offsets from..to never arrived.
   */
  reason: 'recovery_failed' | 'epoch_changed' | 'missing';
  channel: string;
  epoch?: string;
  offset?: number;
  previousEpoch?: string | null;
  previousOffset?: number | null;
  from?: number;
  to?: number;
}

export interface SubscribeOptions<T = unknown> {
  /** Recover missed messages of durable channels on re-subscribe. Default true. */
  recover?: boolean;
  onJoin?: (client: PresenceClient, frame: PresenceFrame) => void;
  onLeave?: (client: PresenceClient, frame: PresenceFrame) => void;
  onGap?: (info: GapInfo) => void;
  onRecoveryFailed?: (info: GapInfo) => void;
  onSubscribed?: (result: SubscribeResult, meta: { recovering: boolean }) => void;
  onError?: (err: HeraldError) => void;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** When willReconnect: the delay before the next attempt. */
  delayMs?: number;
}

export interface HistoryResult<T = unknown> {
  epoch: string;
  offset: number;
  messages: { offset: number; data: T }[];
}

export class Subscription<T = unknown> {
  readonly client: Herald;
  readonly channel: string;
  readonly recover: boolean;
  /** Durable channels: epoch and last offset seen, null until known. */
  readonly epoch: string | null;
  readonly offset: number | null;
  /** True between a subscribe reply and the end of the connection. */
  readonly active: boolean;
  readonly duplicatesDropped: number;
  readonly lastReply: SubscribeResult | null;
  /** Resolves with the first subscribe reply; rejects if the node refuses. */
  readonly ready: Promise<SubscribeResult>;
  unsubscribe(): Promise<void>;
  on(event: 'message', fn: (data: T, frame: MessageFrame<T>) => void): () => void;
  on(event: 'join' | 'leave', fn: (client: PresenceClient, frame: PresenceFrame) => void): () => void;
  on(event: 'gap', fn: (info: GapInfo) => void): () => void;
  on(event: 'subscribed', fn: (result: SubscribeResult, meta: { recovering: boolean }) => void): () => void;
  on(event: 'error', fn: (err: HeraldError) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
}

export class Herald {
  constructor(url: string, options?: HeraldOptions);
  readonly url: string;
  readonly state: ConnectionState;
  readonly welcome: WelcomeFrame | null;
  readonly session: string | null;
  readonly node: string | null;
  /** The transport of the current connection or attempt; null before the first attempt. */
  readonly transport: Transport | null;
  readonly subscriptions: Map<string, Subscription>;

  connect(): Promise<WelcomeFrame>;
  close(): void;
  subscribe<T = unknown>(channel: string, onMessage?: (data: T, frame: MessageFrame<T>) => void, options?: SubscribeOptions<T>): Subscription<T>;
  publish(channel: string, data: unknown, options?: { idempotencyKey?: string }): Promise<{ epoch?: string; offset?: number; stream_id?: string }>;
  history<T = unknown>(channel: string, options?: { since?: { epoch: string; offset: number }; limit?: number }): Promise<HistoryResult<T>>;
  presence(channel: string): Promise<{ clients: PresenceClient[] }>;
  presenceStats(channel: string): Promise<{ clients: number; users: number }>;
  refresh(token: string): Promise<{}>;
  /** Resolves with the round-trip time in ms. */
  ping(): Promise<number>;

  on(event: 'connecting', fn: (info: { attempt: number; transport: Transport | null }) => void): () => void;
  on(event: 'connected', fn: (welcome: WelcomeFrame) => void): () => void;
  on(event: 'disconnected', fn: (ev: DisconnectedEvent) => void): () => void;
  on(event: 'state', fn: (state: ConnectionState) => void): () => void;
  on(event: 'error', fn: (err: HeraldError) => void): () => void;
  on(event: 'message', fn: (frame: MessageFrame) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;

  static HeraldError: typeof HeraldError;
  static Subscription: typeof Subscription;
  static backoffDelay: typeof backoffDelay;
  static closeAction: typeof closeAction;
  static buildUrl: typeof buildUrl;
  static buildHttpUrl: typeof buildHttpUrl;
  /** Every transport, in the default order: ['websocket', 'sse', 'http-stream']. */
  static readonly transports: Transport[];
  static readonly version: string;
  static readonly protocolVersion: 1;
}

/** Full-jitter delay: an integer in [0, min(maxMs, baseMs * 2^attempt)). */
export function backoffDelay(attempt: number, backoff?: BackoffOptions, random?: () => number): number;
/** The reconnect policy for a close code (PROTOCOL.md §2.4). */
export function closeAction(code: number, clientInitiated?: boolean): CloseAction;
/** The WebSocket URL for a page-relative or absolute URL and an optional token. */
export function buildUrl(url: string, token?: string | null): string;
/**
 * The URL of endpoint 'sse', 'stream' or 'emulation' for the WebSocket URL `url` (or the
 * base options.httpUrl); options.token is added as ?token= (not to 'emulation').
 */
export function buildHttpUrl(url: string, endpoint: 'sse' | 'stream' | 'emulation', options?: { token?: string | null; httpUrl?: string | null }): string;

export default Herald;

type HeraldConstructor = typeof Herald;

declare global {
  /** Defined by loading herald.js as a classic script. */
  var Herald: HeraldConstructor;
}
