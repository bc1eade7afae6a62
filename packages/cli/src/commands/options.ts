// Option parsers shared by the subcommands: each rejects bad values with a message naming them.
import { InvalidArgumentError } from 'commander';
import { DEVICES, isKvWireDtype, KV_WIRE_DTYPES, parseWeightDtype, WeightDtypeError, type Device, type KvWireDtype, type WeightDtype } from '@pdserve/engine';

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected a non-negative integer, got ${value}`);
  return n;
}

export function niceValue(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 19) throw new InvalidArgumentError(`expected an integer from 0 to 19, got ${value}`);
  return n;
}

export function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`expected a non-negative number, got ${value}`);
  return n;
}

export function positiveNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected a positive number, got ${value}`);
  return n;
}

export function device(value: string): Device {
  if (!(DEVICES as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${DEVICES.join(', ')}, got ${value}`);
  return value as Device;
}

export function kvWireDtype(value: string): KvWireDtype {
  if (!isKvWireDtype(value)) throw new InvalidArgumentError(`expected one of ${KV_WIRE_DTYPES.join(', ')}, got ${value}`);
  return value;
}

export function weightDtype(value: string): WeightDtype {
  try {
    return parseWeightDtype(value);
  } catch (err) {
    if (err instanceof WeightDtypeError) throw new InvalidArgumentError(err.message);
    throw err;
  }
}

export function oneOf<T extends string>(flag: string, values: readonly T[]): (value: string) => T {
  return (value: string) => {
    if (!(values as readonly string[]).includes(value)) throw new InvalidArgumentError(`${flag} must be one of ${values.join(', ')}, got ${value}`);
    return value as T;
  };
}
