// How ONNX Runtime holds the weights of a model this writer produced (BENCHMARKS.md, "The llama-1b
// shape at q4: memory", 2026-12-06): it memory-maps every external-data initializer from
// model.onnx.data, at the writer's 64-byte offsets too (no 4096 alignment needed), and keeps the
// mapping of an initializer no kernel repacks — the GatherBlockQuantized embedding table stays
// file-backed, only its gathered rows become resident. MatMulNBits repacks its B into anonymous
// memory and drops B's mapping; on x86-64 it also copies the scales into the packed buffer but keeps
// their mapping, whose pages the packing made resident. Linux only (reads /proc/self/smaps).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine, generate, writeDummyModel } from '../src/index.ts';
import { ModelProto } from '../src/onnx/onnx-proto.ts';
import { createSession } from '../src/runtime/session.ts';

interface Mapping { fileOffset: number; size: number; rssBytes: number }
interface Stored { name: string; offset: number; length: number }

/** This process's mappings of `path`, from /proc/self/smaps. */
function mappingsOf(path: string): Mapping[] {
  const out: Mapping[] = [];
  let cur: Mapping | null = null;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (head) {
      cur = head[4] === path ? { fileOffset: parseInt(head[3], 16), size: parseInt(head[2], 16) - parseInt(head[1], 16), rssBytes: 0 } : null;
      if (cur) out.push(cur);
    } else if (cur && line.startsWith('Rss:')) {
      cur.rssBytes = Number(line.split(/\s+/)[1]) * 1024;
    }
  }
  return out;
}

function externalInitializers(modelPath: string): Map<string, Stored> {
  const model = ModelProto.decode(readFileSync(modelPath)) as unknown as { graph: { initializer: { name: string; externalData?: { key: string; value: string }[] }[] } };
  const out = new Map<string, Stored>();
  for (const t of model.graph.initializer) {
    if (!t.externalData?.length) continue;
    const kv = Object.fromEntries(t.externalData.map((e) => [e.key, e.value]));
    out.set(t.name, { name: t.name, offset: Number(kv.offset), length: Number(kv.length) });
  }
  return out;
}

test('ONNX Runtime maps external-data initializers (64-byte offsets too); the q4 embedding table stays file-backed, MatMulNBits B is repacked', { skip: !existsSync('/proc/self/smaps') && 'needs /proc/self/smaps (Linux)' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-mapping-'));
  try {
    writeDummyModel('tiny', dir, { dtype: 'q4' });
    const stored = externalInitializers(join(dir, 'model.onnx'));
    // As ONNX Runtime leaves them: the release that createSession does by default is the next test's.
    const session = await createSession(join(dir, 'model.onnx'), { threads: 1, releaseMappedWeights: false });
    try {
      const maps = mappingsOf(join(realpathSync(dir), 'model.onnx.data'));
      const mappingOf = (t: Stored) => maps.find((m) => t.offset >= m.fileOffset && t.offset + t.length <= m.fileOffset + m.size);
      const get = (name: string) => { const t = stored.get(name); assert.ok(t, `initializer ${name} in ${[...stored.keys()].join(' ')}`); return t; };

      // Mapped at an offset that is not page-aligned: the writer's 64-byte alignment is enough.
      const unaligned = [...stored.values()].filter((t) => t.offset % 4096 !== 0 && mappingOf(t));
      assert.ok(unaligned.length > 0, `some initializer at a non-4096-aligned offset is mapped: ${JSON.stringify([...stored.values()].map((t) => [t.name, t.offset]))}`);

      // The GatherBlockQuantized table: mapped, and nothing of it read at load.
      for (const name of ['tok_embeddings', 'tok_embeddings.scales']) {
        const m = mappingOf(get(name));
        assert.ok(m, `${name} is mapped from the weight file, not copied`);
        assert.equal(m.rssBytes, 0, `${name}: no page resident after load`);
      }

      // MatMulNBits B: repacked by MLAS into its own buffer, the mapping released.
      for (const name of ['layers.0.w13', 'tok_embeddings.classifier']) {
        assert.equal(mappingOf(get(name)), undefined, `${name} (MatMulNBits B) is repacked and its mapping released`);
      }
      // ... while on x86-64 its scales, packed as well, keep their mapping and the pages packing read.
      if (process.arch === 'x64') {
        const m = mappingOf(get('tok_embeddings.classifier.scales'));
        assert.ok(m && m.rssBytes > 0, 'MatMulNBits scales stay mapped and resident after packing (x86-64)');
      }
    } finally {
      await session.release();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a loaded engine gives back the weight-file pages ORT left resident, and decodes the same tokens after (they fault back in)', { skip: !existsSync('/proc/self/smaps') && 'needs /proc/self/smaps (Linux)' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-release-'));
  const resident = () => mappingsOf(join(realpathSync(dir), 'model.onnx.data')).reduce((s, m) => s + m.rssBytes, 0);
  const greedy = async (e: Engine) => (await generate(e, [1, 20, 30, 40, 50], { temperature: 0, topK: 0, topP: 1, maxTokens: 24, stopTokenIds: [] })).ids;
  try {
    writeDummyModel('tiny', dir, { dtype: 'q4' });
    const kept = await Engine.load(dir, { threads: 1, maxSequences: 1, releaseMappedWeights: false });
    const before = resident();
    if (process.arch === 'x64') assert.ok(before > 0, 'ORT leaves the MatMulNBits scales resident (x86-64)');
    const want = await greedy(kept);
    // The default: the second engine's load releases every page of the file mapped in this process,
    // the first engine's included.
    const released = await Engine.load(dir, { threads: 1, maxSequences: 1 });
    assert.equal(resident(), 0, `weight-file pages resident after the release (${before} before)`);
    assert.deepEqual(await greedy(released), want);
    assert.deepEqual(await greedy(kept), want, 'the engine whose pages were dropped under it reads them back');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
