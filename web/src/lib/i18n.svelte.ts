// Every string the console shows comes from a catalog; numbers, money and dates are formatted by
// Intl for the chosen locale and shown in the user's time zone.
import en from './i18n/en.json';
import fi from './i18n/fi.json';
import sv from './i18n/sv.json';

export const LOCALES = { en, fi, sv } as const;
export type Locale = keyof typeof LOCALES;
type Catalog = Record<string, string>;

const STORED = 'innosystem.locale'; // the last choice on this browser, for the sign-in page

export const prefs = $state<{ locale: Locale; timeZone: string }>({
  locale: pick(localStorage.getItem(STORED) ?? navigator.language),
  timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone
});

/** The user's choice: shown at once, remembered here and (by the caller) on the user. */
export function choose(locale: Locale): void {
  prefs.locale = locale;
  localStorage.setItem(STORED, locale);
}

export function pick(tag: string | undefined): Locale {
  const base = (tag ?? '').slice(0, 2).toLowerCase();
  return base in LOCALES ? (base as Locale) : 'en';
}

/** The catalog's text for `key` with `{name}` placeholders filled; English when a catalog lacks it. */
export function t(key: string, params: Record<string, string | number> = {}): string {
  const text = (LOCALES[prefs.locale] as Catalog)[key] ?? (en as Catalog)[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(params[name] ?? `{${name}}`));
}

const intlTag = () => ({ en: 'en-GB', fi: 'fi-FI', sv: 'sv-SE' })[prefs.locale];

export function money(cents: number | string | undefined, currency = 'USD'): string {
  return new Intl.NumberFormat(intlTag(), { style: 'currency', currency: currency || 'USD' }).format(Number(cents ?? 0) / 100);
}

export function number(value: number | string | undefined): string {
  return new Intl.NumberFormat(intlTag()).format(Number(value ?? 0));
}

export function dateTime(value: string | undefined): string {
  if (!value) return '—';
  return new Intl.DateTimeFormat(intlTag(), { dateStyle: 'medium', timeStyle: 'medium', timeZone: prefs.timeZone })
    .format(new Date(value));
}

/** `JOB_STATUS_RUNNING` → the catalog's `enum.JOB_STATUS_RUNNING`, or the value's last word. */
export function term(value: string | undefined): string {
  if (!value) return '—';
  const key = `enum.${value}`;
  const found = (LOCALES[prefs.locale] as Catalog)[key] ?? (en as Catalog)[key];
  return found ?? value.split('_').slice(-1)[0].toLowerCase();
}
