// Shared helpers for the bullmq fixture scripts.
//
// Every script:
//   * parses its arguments with node's util.parseArgs (strict),
//   * takes --redis URL, --queue NAME, --prefix P (default "bull"),
//     --bullmq PKG (default "bullmq"; also "bullmq-5", "bullmq-6-3"),
//   * logs to stderr only and prints exactly ONE JSON document on stdout,
//   * closes every connection it opened and exits 0 on success, or prints
//     "<script>: error: <message>" on stderr and exits non-zero on failure.

import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import path from 'node:path';
import IORedis from 'ioredis';

const require = createRequire(import.meta.url);

export const ALLOWED_PACKAGES = ['bullmq', 'bullmq-5', 'bullmq-6-3'];

export const COMMON_OPTIONS = {
  redis: { type: 'string' },
  queue: { type: 'string' },
  prefix: { type: 'string', default: 'bull' },
  bullmq: { type: 'string', default: 'bullmq' },
  help: { type: 'boolean', short: 'h', default: false },
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
  return v;
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
 */
export function connectionOpts(url) {
  return { url, maxRetriesPerRequest: null };
}

/**
 * Fails fast (instead of bullmq's endless reconnect loop) when Redis is not
 * reachable at `url`.
 */
export async function preflight(url) {
  const client = new IORedis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    connectTimeout: 5000,
    retryStrategy: () => null,
  });
  let lastError = null;
  client.on('error', (err) => {
    lastError = err;
  });
  try {
    await client.connect();
    await client.ping();
    const info = await client.info('server');
    const m = /redis_version:(\S+)/.exec(info);
    log(`redis ${url} reachable (redis_version ${m ? m[1] : 'unknown'})`);
  } catch (err) {
    const why = lastError && lastError.message ? lastError.message : err.message;
    throw new Error(`cannot reach Redis at ${url}: ${why}`);
  } finally {
    client.disconnect();
  }
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
export async function openQueue(bullmq, values, onCleanup) {
  const queue = new bullmq.Queue(values.queue, {
    connection: connectionOpts(values.redis),
    prefix: values.prefix,
  });
  queue.on('error', (err) => log(`queue error: ${err.message}`));
  onCleanup(() => queue.close());
  await queue.waitUntilReady();
  return queue;
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
