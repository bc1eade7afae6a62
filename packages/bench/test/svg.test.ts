import { test } from 'node:test';
import assert from 'node:assert/strict';
import { niceTicks, rateAtAttainment, renderAttainmentSvg } from '../src/index.ts';
import { checkXml } from './xml-check.ts';

test('rate at 90% attainment: highest passing rate and the interpolated crossing', () => {
  const pts = [
    { rate: 1, attainment: 1 },
    { rate: 2, attainment: 0.95 },
    { rate: 4, attainment: 0.7 },
    { rate: 8, attainment: 0.2 },
  ];
  const e = rateAtAttainment(pts);
  assert.equal(e.max, 2);
  // 2 + (0.95 - 0.9) / (0.95 - 0.7) * (4 - 2) = 2.4
  assert.ok(Math.abs(e.interpolated! - 2.4) < 1e-12);
  assert.equal(e.lowerBound, false);
  // Order does not matter; a non-monotone curve uses the highest passing rate.
  const e2 = rateAtAttainment([{ rate: 3, attainment: 0.92 }, { rate: 1, attainment: 0.95 }, { rate: 2, attainment: 0.85 }, { rate: 5, attainment: 0.82 }]);
  assert.equal(e2.max, 3);
  assert.ok(Math.abs(e2.interpolated! - 3.4) < 1e-12); // 3 + 0.02 / 0.10 * 2
  assert.deepEqual(rateAtAttainment([{ rate: 1, attainment: 0.5 }]), { max: null, interpolated: null, lowerBound: false });
  assert.deepEqual(rateAtAttainment([{ rate: 1, attainment: 1 }, { rate: 3, attainment: 0.9 }]), { max: 3, interpolated: 3, lowerBound: true });
  assert.equal(rateAtAttainment([{ rate: 1, attainment: 1 }, { rate: Infinity, attainment: 0.95 }]).max, Infinity);
});

test('nice ticks cover the range with round steps', () => {
  assert.deepEqual(niceTicks(10), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(niceTicks(7), [0, 2, 4, 6, 8]);
  assert.deepEqual(niceTicks(0.3), [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]);
  assert.deepEqual(niceTicks(0), [0, 1]);
});

test('attainment SVG: well-formed, axes, ticks, 90% line, one path per series, escaped names', () => {
  const svg = renderAttainmentSvg(
    [
      { name: 'disaggregated <P/D>', points: [{ rate: 1, attainment: 1 }, { rate: 2, attainment: 0.96 }, { rate: 4, attainment: 0.6 }] },
      { name: 'colocated & co', points: [{ rate: 4, attainment: 0.3 }, { rate: 1, attainment: 0.97 }, { rate: 2, attainment: 0.8 }] },
    ],
    { title: 'attainment' },
  );
  assert.deepEqual(checkXml(svg), []);
  assert.match(svg, /^<\?xml/);
  assert.match(svg, /<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.ok(svg.includes('disaggregated &lt;P/D&gt;'));
  assert.ok(svg.includes('colocated &amp; co'));
  assert.equal((svg.match(/<path /g) ?? []).length, 2);
  assert.equal((svg.match(/<circle cx/g) ?? []).length, 6 + 2);
  assert.ok(svg.includes('class="threshold"'));
  assert.ok(svg.includes('90% target'));
  assert.ok(svg.includes('>100%</text>') && svg.includes('>0%</text>'));
  assert.ok(svg.includes('Request rate (req/s)') && svg.includes('SLO attainment'));
  // The series are drawn left to right regardless of input order.
  const d = svg.match(/<path d="([^"]+)"/g)![1];
  const xs = [...d.matchAll(/[ML]([\d.]+),/g)].map((m) => Number(m[1]));
  assert.deepEqual([...xs].sort((a, b) => a - b), xs);
  assert.deepEqual(checkXml(renderAttainmentSvg([])), []);
});
