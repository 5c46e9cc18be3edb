// Shared helpers for the bullmq fixture scripts.
//
// Every script:
//   * parses its arguments with node's util.parseArgs (strict),
//   * takes --redis URL, --queue NAME, --prefix P (default "bull"),
//     --bullmq PKG (default "bullmq", 6.7.0; also "bullmq-<version>", see package.json),
//   * logs to stderr only and prints exactly ONE JSON document on stdout,
//   * closes every connection it opened and exits 0 on success, or prints
//     "<script>: error: <message>" on stderr and exits non-zero on failure.
//
// seed.mjs, process.mjs, inspect.mjs and retry.mjs also take (TOPOLOGY_OPTIONS):
//   * --cluster: --redis redis://[:password@]host:port names one node of a Redis
//     Cluster; every client is an ioredis Cluster started from it. Keys of a
//     queue must share a slot, so use a hash-tagged prefix such as "{bull}".
//   * --sentinel NAME: --redis redis://[:password@]host:port[/db] names a
//     sentinel; clients connect to the master NAME it reports. The URL's
//     password (if any) is the data nodes' password, not the sentinel's.
// Without either flag nothing changes: bullmq gets { url, maxRetriesPerRequest: null }.

import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import path from 'node:path';
import IORedis from 'ioredis';

const require = createRequire(import.meta.url);

/** The installed BullMQ releases: `bullmq` (6.7.0) and one `bullmq-<version>` npm alias per
 *  release the differential tests cover (package.json). */
export const ALLOWED_PACKAGES = Object.keys(require('./package.json').dependencies).filter((d) =>
  /^bullmq(-\d+\.\d+\.\d+)?$/.test(d),
);

export const COMMON_OPTIONS = {
  redis: { type: 'string' },
  queue: { type: 'string' },
  prefix: { type: 'string', default: 'bull' },
  bullmq: { type: 'string', default: 'bullmq' },
  help: { type: 'boolean', short: 'h', default: false },
};

/** Opt-in options for scripts that can run on a Redis Cluster or through a sentinel. */
export const TOPOLOGY_OPTIONS = {
  cluster: { type: 'boolean', default: false },
  sentinel: { type: 'string' },
};

export class UsageError extends Error {}

let scriptName = path.basename(process.argv[1] || 'script');

export function log(...args) {
  const line = args
    .map((a) => (typeof a === 'string' ? a : JSON.stringify(a)))
    .join(' ');
  process.stderr.write(`[${scriptName}] ${line}\n`);
}

/**
 * Parses argv with the common options plus `extra`. Validates the common ones.
 */
export function parseCli(extra, usage) {
  let parsed;
  try {
    parsed = parseArgs({
      args: process.argv.slice(2),
      options: { ...COMMON_OPTIONS, ...extra },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new UsageError(`${err.message}\n${usage}`);
  }
  const v = parsed.values;
  if (v.help) {
    process.stderr.write(`${usage}\n`);
    process.exit(0);
  }
  if (!v.redis) throw new UsageError(`--redis URL is required\n${usage}`);
  if (!/^rediss?:\/\//.test(v.redis)) {
    throw new UsageError(
      `--redis must look like redis://host:port[/db], got ${JSON.stringify(v.redis)}`,
    );
  }
  if (!v.queue) throw new UsageError(`--queue NAME is required\n${usage}`);
  if (v.queue.includes(':')) throw new UsageError('--queue must not contain ":"');
  if (!v.prefix) throw new UsageError('--prefix must not be empty');
  if (!ALLOWED_PACKAGES.includes(v.bullmq)) {
    throw new UsageError(
      `--bullmq must be one of ${ALLOWED_PACKAGES.join(', ')}, got ${JSON.stringify(v.bullmq)}`,
    );
  }
  if (v.cluster && v.sentinel !== undefined) {
    throw new UsageError('--cluster and --sentinel are mutually exclusive');
  }
  if (v.sentinel !== undefined && !v.sentinel) throw new UsageError('--sentinel NAME must not be empty');
  if (v.cluster || v.sentinel) {
    const u = parseRedisUrl(v.redis);
    if (v.cluster && u.db) throw new UsageError('--cluster: a Redis Cluster only has db 0');
    if (v.cluster && !/\{[^}]+\}/.test(`${v.prefix}:${v.queue}`)) {
      log(
        `warning: neither --prefix ${v.prefix} nor --queue ${v.queue} has a {hash tag}; ` +
          'bullmq scripts will fail with CROSSSLOT on a cluster',
      );
    }
  }
  return v;
}

/** Splits redis://[user:password@]host:port[/db] (user and password percent-decoded). */
export function parseRedisUrl(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`--redis: cannot parse ${JSON.stringify(url)}`);
  }
  const db = u.pathname && u.pathname !== '/' ? Number(u.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0) throw new UsageError(`--redis: bad db in ${JSON.stringify(url)}`);
  const out = { host: u.hostname || '127.0.0.1', port: Number(u.port || 6379), db };
  if (u.username) out.username = decodeURIComponent(u.username);
  if (u.password) out.password = decodeURIComponent(u.password);
  if (u.protocol === 'rediss:') out.tls = {};
  return out;
}

/** ioredis options of one data node: credentials (and tls) from the --redis URL. */
function nodeAuth(u) {
  const o = {};
  for (const k of ['username', 'password', 'tls']) if (u[k] !== undefined) o[k] = u[k];
  return o;
}

/** Options for `new IORedis(...)` that reach the master through the sentinel. */
function sentinelOptions(values, extra) {
  const u = parseRedisUrl(values.redis);
  return {
    sentinels: [{ host: u.host, port: u.port }],
    name: values.sentinel,
    db: u.db,
    ...nodeAuth(u),
    ...extra,
  };
}

/**
 * A plain ioredis client for the target: `new IORedis(url, extra)` by default,
 * an ioredis Cluster with --cluster (extra goes to every node), a
 * sentinel-resolved client with --sentinel. The caller closes it.
 */
export function createClient(values, extra = {}) {
  if (values.cluster) {
    const u = parseRedisUrl(values.redis);
    return new IORedis.Cluster([{ host: u.host, port: u.port }], {
      redisOptions: { ...nodeAuth(u), ...extra },
    });
  }
  if (values.sentinel) return new IORedis(sentinelOptions(values, extra));
  return new IORedis(values.redis, extra);
}

/**
 * The `connection` to give a bullmq Queue / Worker / QueueEvents: the options
 * of connectionOpts() by default and with --sentinel (bullmq then creates and
 * closes its clients), a fresh ioredis Cluster with --cluster (bullmq cannot
 * build one from options; it leaves a client it was given open, so it is
 * closed here on cleanup, after the bullmq object that uses it).
 */
export function bullmqConnection(values, onCleanup) {
  if (values.cluster) {
    const client = createClient(values, { maxRetriesPerRequest: null });
    client.on('error', (err) => log(`cluster client error: ${err.message}`));
    onCleanup(async () => {
      try {
        await client.quit();
      } catch {
        client.disconnect();
      }
    });
    return client;
  }
  if (values.sentinel) return sentinelOptions(values, { maxRetriesPerRequest: null });
  return connectionOpts(values.redis);
}

/** Parses a non-negative integer option. */
export function intOpt(values, name, dflt) {
  const raw = values[name];
  if (raw === undefined) return dflt;
  if (!/^\d+$/.test(raw)) {
    throw new UsageError(`--${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

/** Parses "--ids 1,2,3" into ["1","2","3"] (trimmed, empty entries dropped). */
export function idsOpt(values) {
  if (!values.ids) throw new UsageError('--ids ID[,ID...] is required');
  const ids = values.ids
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (ids.length === 0) throw new UsageError('--ids must name at least one job id');
  return ids;
}

/** Dynamically imports the requested bullmq package and reports its version. */
export async function loadBullmq(pkg) {
  const mod = await import(pkg);
  let version = 'unknown';
  try {
    version = require(`${pkg}/package.json`).version;
  } catch {
    // ignore
  }
  log(`using ${pkg} (bullmq ${version})`);
  return { mod, version };
}

/**
 * Connection options handed to bullmq. bullmq itself creates (and closes) the
 * ioredis clients from these: Queue, Worker and QueueEvents each own theirs.
 * Host, port, db and credentials rather than `url`: releases up to 5.9 ignore `url`.
 */
export function connectionOpts(url) {
  return { ...parseRedisUrl(url), maxRetriesPerRequest: null };
}

/**
 * Fails fast (instead of bullmq's endless reconnect loop) when Redis is not
 * reachable at `url`. Also takes the parsed values: then --cluster (the
 * cluster must also say cluster_state:ok) and --sentinel are honoured.
 */
export async function preflight(url) {
  if (typeof url !== 'string') {
    const values = url;
    if (values.cluster) return preflightCluster(values);
    if (values.sentinel) return preflightSentinel(values);
    url = values.redis;
  }
  const client = new IORedis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    connectTimeout: 5000,
    retryStrategy: () => null,
  });
  await probe(client, `cannot reach Redis at ${url}`, async (c) => {
    await c.ping();
    return `redis ${url} reachable (redis_version ${await redisVersion(c)})`;
  });
}

async function preflightCluster(values) {
  const u = parseRedisUrl(values.redis);
  const client = new IORedis.Cluster([{ host: u.host, port: u.port }], {
    lazyConnect: true,
    enableOfflineQueue: false,
    clusterRetryStrategy: () => null,
    redisOptions: { ...nodeAuth(u), connectTimeout: 5000, maxRetriesPerRequest: 0, retryStrategy: () => null },
  });
  await probe(client, `cannot use Redis Cluster at ${values.redis}`, async (c) => {
    const info = String(await c.cluster('INFO'));
    const state = /cluster_state:(\S+)/.exec(info);
    if (!state || state[1] !== 'ok') throw new Error(`cluster_state is ${state ? state[1] : 'unknown'}`);
    return (
      `redis cluster via ${u.host}:${u.port} reachable: ${c.nodes('master').length} master(s), ` +
      `cluster_state:ok (redis_version ${await redisVersion(c)})`
    );
  });
}

async function preflightSentinel(values) {
  const client = new IORedis(
    sentinelOptions(values, {
      lazyConnect: true,
      enableOfflineQueue: false,
      connectTimeout: 5000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      sentinelRetryStrategy: () => null,
    }),
  );
  const what = `cannot reach master ${values.sentinel} through sentinel ${values.redis}`;
  await probe(client, what, async (c) => {
    await c.ping();
    const role = /role:(\S+)/.exec(await c.info('replication'));
    const s = c.stream;
    return (
      `redis master ${values.sentinel} via sentinel ${values.redis} reachable at ` +
      `${s ? `${s.remoteAddress}:${s.remotePort}` : '?'} (role ${role ? role[1] : '?'}, ` +
      `redis_version ${await redisVersion(c)})`
    );
  });
}

/**
 * Connects `client` (lazyConnect), runs `check` on it and logs what it returns; on any
 * failure throws "<what>: <the connection's last error, or the failure>". Always
 * disconnects.
 */
async function probe(client, what, check) {
  let lastError = null;
  client.on('error', (err) => {
    lastError = err;
  });
  try {
    await client.connect();
    log(await check(client));
  } catch (err) {
    const why = lastError && lastError.message ? lastError.message : err.message;
    throw new Error(`${what}: ${why}`);
  } finally {
    client.disconnect();
  }
}

async function redisVersion(client) {
  const m = /redis_version:(\S+)/.exec(await client.info('server'));
  return m ? m[1] : 'unknown';
}

/** Normalises undefined to null so that JSON keys are always present. */
export function nn(v) {
  return v === undefined ? null : v;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs `fn` (which returns the JSON result), prints it on stdout, sets the
 * exit code. `cleanup` functions registered via the returned helper are run in
 * reverse order whether or not `fn` succeeds.
 */
export async function runMain(name, fn, { hardTimeoutMs = 180000 } = {}) {
  scriptName = name;
  const cleanups = [];
  const onCleanup = (c) => cleanups.push(c);
  const hard = setTimeout(() => {
    process.stderr.write(`${name}: error: hard timeout after ${hardTimeoutMs} ms\n`);
    process.exit(3);
  }, hardTimeoutMs);
  hard.unref();

  let result;
  let failure;
  try {
    result = await fn(onCleanup);
  } catch (err) {
    failure = err;
  }
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch (err) {
      log(`cleanup error (ignored): ${err && err.message}`);
    }
  }
  if (failure) {
    const msg =
      process.env.BULLMQ_FIXTURE_DEBUG && failure.stack
        ? failure.stack
        : (failure && failure.message) || String(failure);
    process.stderr.write(`${name}: error: ${msg}\n`);
    process.exitCode = failure instanceof UsageError ? 2 : 1;
  } else {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    process.exitCode = 0;
  }
  // Everything is closed at this point; if a stray handle keeps the loop alive,
  // do not hang the caller.
  const t = setTimeout(() => {
    log('warning: event loop still busy after cleanup; forcing exit');
    process.exit(process.exitCode);
  }, 5000);
  t.unref();
}

/** Opens a bullmq Queue and registers it for cleanup. */
export async function openQueue(bullmq, values, onCleanup, extra = {}) {
  const queue = new bullmq.Queue(values.queue, {
    connection: bullmqConnection(values, onCleanup),
    prefix: values.prefix,
    ...extra,
  });
  queue.on('error', (err) => log(`queue error: ${err.message}`));
  onCleanup(() => queue.close());
  await queue.waitUntilReady();
  return queue;
}

/**
 * A Worker on the queue of `values` running `processor`, on its own connection; its errors are
 * logged and it is closed at cleanup. `extra` adds Worker options (concurrency, ...).
 */
export function openWorker(bullmq, values, onCleanup, processor, extra = {}) {
  const worker = new bullmq.Worker(values.queue, processor, {
    connection: bullmqConnection(values, onCleanup),
    prefix: values.prefix,
    ...extra,
  });
  worker.on('error', (err) => log(`worker error: ${err.message}`));
  onCleanup(() => worker.close());
  return worker;
}

/** Reads a job (or null) in the shape shared by inspect.mjs. */
export async function describeJob(bullmq, queue, id) {
  const job = await bullmq.Job.fromId(queue, id);
  if (!job) {
    return {
      id,
      exists: false,
      state: null,
      attemptsMade: null,
      attemptsStarted: null,
      finishedOn: null,
      processedOn: null,
      failedReason: null,
      returnvalue: null,
      priority: null,
    };
  }
  const state = await job.getState();
  return {
    id: String(job.id),
    exists: true,
    state,
    attemptsMade: nn(job.attemptsMade),
    attemptsStarted: nn(job.attemptsStarted),
    finishedOn: nn(job.finishedOn),
    processedOn: nn(job.processedOn),
    failedReason: job.failedReason ? job.failedReason : null,
    returnvalue: nn(job.returnvalue),
    priority: nn(job.priority),
  };
}
