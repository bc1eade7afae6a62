// Log format: JSON unless stdout is a terminal (pino-pretty), PDSERVE_LOG_FORMAT overriding.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger, logFormat } from '../src/logger.ts';

function sink(): { stream: Writable; text: () => string } {
  let out = '';
  const stream = new Writable({ write(chunk, _enc, cb) { out += chunk; cb(); } });
  return { stream, text: () => out };
}

test('the format follows the terminal unless PDSERVE_LOG_FORMAT says otherwise', () => {
  assert.equal(logFormat({}, true), 'pretty');
  assert.equal(logFormat({}, false), 'json');
  assert.equal(logFormat({ PDSERVE_LOG_FORMAT: 'json' }, true), 'json');
  assert.equal(logFormat({ PDSERVE_LOG_FORMAT: 'pretty' }, false), 'pretty');
  assert.equal(logFormat({ PDSERVE_LOG_FORMAT: 'xml' }, false), 'json');
});

test('json lines for machines, pretty lines for people', () => {
  const json = sink();
  createLogger('svc', { format: 'json', destination: json.stream }).info({ worker_id: 'w1' }, 'hello');
  const line = JSON.parse(json.text().trim());
  assert.equal(line.msg, 'hello');
  assert.equal(line.name, 'svc');
  assert.equal(line.worker_id, 'w1');
  const pretty = sink();
  createLogger('svc', { format: 'pretty', destination: pretty.stream }).warn({ worker_id: 'w1' }, 'hello');
  const text = pretty.text();
  assert.throws(() => JSON.parse(text.trim()));
  assert.match(text, /WARN.*\(svc\).*hello/);
  assert.match(text, /worker_id: "w1"/);
});
