// Very frequent function words that are distinctive for each language. Enough to tell the
// languages of the medical literature apart on a few hundred words; not a general identifier.
const STOPWORDS: Record<string, string[]> = {
  en: ["the", "and", "of", "with", "was", "were", "in", "to", "is", "for", "that", "this", "patients", "which"],
  fr: ["le", "la", "les", "des", "et", "est", "dans", "une", "pour", "avec", "sont", "chez", "du", "qui"],
  de: ["der", "die", "und", "das", "mit", "ist", "von", "nicht", "bei", "wurde", "eine", "den", "zu", "auf"],
  es: ["el", "los", "las", "del", "y", "con", "para", "por", "una", "que", "fue", "en", "pacientes", "se"],
  it: ["il", "gli", "della", "delle", "con", "per", "una", "che", "sono", "nel", "pazienti", "di", "è", "stato"],
  pt: ["os", "das", "dos", "com", "para", "uma", "não", "foi", "pacientes", "em", "que", "ao", "são", "pelo"],
  nl: ["de", "het", "een", "van", "en", "met", "niet", "voor", "zijn", "werd", "bij", "patiënten", "ook", "dat"],
};

const SAMPLE_WORDS = 3000;
const MIN_HITS = 8;

/** ISO 639-1 code of the most likely language, or undefined when the text gives too little to go on. */
export function guessLanguage(text: string): string | undefined {
  const words =
    text
      .toLowerCase()
      .match(/\p{L}+/gu)
      ?.slice(0, SAMPLE_WORDS) ?? [];
  const counts = new Map<string, number>();
  for (const w of words) counts.set(w, (counts.get(w) ?? 0) + 1);
  const scores = Object.entries(STOPWORDS)
    .map(([lang, list]) => [lang, list.reduce((n, w) => n + (counts.get(w) ?? 0), 0)] as const)
    .sort((a, b) => b[1] - a[1]);
  const [best, second] = scores;
  if (!best || best[1] < MIN_HITS) return undefined;
  // Romance languages share words; insist on a clear lead rather than guess.
  if (second && best[1] < second[1] * 1.3) return undefined;
  return best[0];
}
