;; Whether a range of float32s holds a NaN or an infinity (exponent bits all ones), over a shared
;; memory the caller owns (a KV receive pool: services/worker/src/kv-buffers.ts). 128-bit SIMD,
;; 64 bytes per iteration into two independent accumulators, then 4-byte words for the tail.
;; Assembled into finite-scan.ts (bytes) by scripts/build-wasm.ts; finite-scan.test.ts checks that
;; the bytes there are this file's.
(module
  (import "env" "memory" (memory 1 65536 shared))
  (func (export "any_nonfinite") (param $p i32) (param $len i32) (result i32)
    (local $end i32) (local $a v128) (local $b v128) (local $exp v128) (local $tail i32)
    (local.set $exp (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $vectors_done
      (loop $vectors
        (br_if $vectors_done (i32.gt_u (i32.add (local.get $p) (i32.const 64)) (local.get $end)))
        (local.set $a (v128.or (local.get $a)
          (i32x4.eq (v128.and (v128.load (local.get $p)) (local.get $exp)) (local.get $exp))))
        (local.set $b (v128.or (local.get $b)
          (i32x4.eq (v128.and (v128.load offset=16 (local.get $p)) (local.get $exp)) (local.get $exp))))
        (local.set $a (v128.or (local.get $a)
          (i32x4.eq (v128.and (v128.load offset=32 (local.get $p)) (local.get $exp)) (local.get $exp))))
        (local.set $b (v128.or (local.get $b)
          (i32x4.eq (v128.and (v128.load offset=48 (local.get $p)) (local.get $exp)) (local.get $exp))))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (br $vectors)))
    (block $words_done
      (loop $words
        (br_if $words_done (i32.gt_u (i32.add (local.get $p) (i32.const 4)) (local.get $end)))
        (local.set $tail (i32.or (local.get $tail)
          (i32.eq (i32.and (i32.load (local.get $p)) (i32.const 0x7f800000)) (i32.const 0x7f800000))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $words)))
    (i32.or (local.get $tail) (v128.any_true (v128.or (local.get $a) (local.get $b))))))
