/**
 * The JSON form of @grafana/schema's types, for type-checking dashboard JSON files.
 *
 * Grafana's TypeScript types use string enums (ThresholdsMode.Absolute = 'absolute', …); in a
 * dashboard's JSON those fields hold the enum's *values*, and TypeScript does not accept a
 * string literal where a string enum is expected. `Json<T>` is `T` with every string enum
 * replaced by the union of its values and nothing else changed: required and optional
 * fields, numeric enums, literal types ('row'), arrays and excess-property checks all stay
 * as strict as in `T`.
 *
 * tests/observability/test_dashboard.py writes `const dashboard: Json<Dashboard> = <JSON>`
 * next to this file and runs `tsc --strict --noEmit` (see tsconfig.json here).
 */
import type { Dashboard, FieldColorModeId, ThresholdsMode } from '@grafana/schema';

export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | bigint | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

export type DashboardJson = Json<Dashboard>;

// The mapping is what it claims: enum values in, nothing else let through.
type Equal<A, B> = (<X>() => X extends A ? 1 : 2) extends <X>() => X extends B ? 1 : 2 ? true : false;
const thresholdModes: Equal<Json<ThresholdsMode>, 'absolute' | 'percentage'> = true;
const colorModeIsClosed: Equal<Json<FieldColorModeId>, string> = false;
const titlesStayStrings: Equal<Json<Dashboard['title']>, string | undefined> = true;
export const sanity = [thresholdModes, colorModeIsClosed, titlesStayStrings];
