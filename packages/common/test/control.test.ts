// Parsing of the control-plane records: role-change commands and router statistics never throw,
// and say what is wrong with a bad one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDesiredRole, parseRouterStats, routerStatsFields, desiredRoleFields, type RouterStats } from '../src/redis/control.ts';
import { parsePdRatio, pdRatioFields } from '../src/redis/keys.ts';

test('desired role: a valid command, nothing, and clear errors for bad ones', () => {
  assert.deepEqual(parseDesiredRole({}), { kind: 'none' });
  assert.deepEqual(parseDesiredRole(null), { kind: 'none' });
  const fields = desiredRoleFields({ role: 'decode', requested_ms: 1234, requested_by: 'op', decision_id: '5-0', epoch: 3 });
  assert.deepEqual(parseDesiredRole(fields), { kind: 'command', command: { role: 'decode', requested_ms: 1234, requested_by: 'op', decision_id: '5-0', epoch: 3 } });
  const chef = parseDesiredRole({ role: 'chef', requested_ms: '1' });
  assert.equal(chef.kind, 'invalid');
  assert.equal(chef.kind === 'invalid' && chef.error, 'unknown role "chef" (one of prefill, decode, unified)');
  const noRole = parseDesiredRole({ requested_ms: '1' });
  assert.equal(noRole.kind === 'invalid' && noRole.error, 'unknown role null (one of prefill, decode, unified)');
  const badTime = parseDesiredRole({ role: 'prefill', requested_ms: 'soon' });
  assert.equal(badTime.kind === 'invalid' && badTime.error, 'requested_ms must be a positive epoch ms, got "soon"');
  // Two different bad commands have different tokens (each is reported once).
  assert.notEqual(chef.kind === 'invalid' && chef.token, badTime.kind === 'invalid' && badTime.token);
});

test('router statistics round-trip; malformed ones are dropped', () => {
  const s: RouterStats = {
    router_id: 'r-1', window_s: 30, arrivals: 60, arrival_rate: 2, finished: 55, prompt_tokens_mean: 120.5, output_tokens_mean: 64,
    ttft_p90_ms: 300, slo_attainment: 0.9, rejected: 1, slo_ttft_ms: 1000, updated_ms: 99,
  };
  assert.deepEqual(parseRouterStats(routerStatsFields(s)), s);
  assert.equal(parseRouterStats({ ...routerStatsFields(s), arrival_rate: 'fast' }), undefined);
  assert.equal(parseRouterStats({ ...routerStatsFields(s), finished: '-1' }), undefined);
  assert.equal(parseRouterStats({}), undefined);
});

test('pd_ratio carries the per-role counts and the reason', () => {
  const r = { prefill: 2, decode: 2, prefill_workers: 0, decode_workers: 0, unified_workers: 2, updated_ms: 5, updated_by: 'planner-a', reason: 'x' };
  assert.deepEqual(parsePdRatio(pdRatioFields(r)), r);
  assert.deepEqual(parsePdRatio({ prefill: '1', decode: '3', unified_workers: '-2' }), { prefill: 1, decode: 3, updated_ms: 0 });
});
