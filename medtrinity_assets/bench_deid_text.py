"""Benchmark: free-text de-identification on real clinical notes with planted identifiers.

Corpus: the distinct ``clinical_notes`` of covid-chestxray-dataset's metadata.csv
(../shared/realdata/covid_chestxray), each copied many times with made-up identifiers planted
between its sentences by templates (a name with a title, a cue or alone; dates in eleven
formats, some with a time; ages over 89 in eight forms; phone, MRN, accession, e-mail, URL,
street address, postcode, institution). Two numbers come out:

* recall per kind: a planted identifier counts as removed when none of its identifying words is
  left in the output (a bare year may stay: years are kept by design);
* over-scrubbing: words of the real notes that the pass removed although they identify no one
  (the notes' own dates are real identifiers and are excluded), and words removed from a set of
  sentences full of eponyms and capitalised anatomy (Parkinson, Hodgkin, Down syndrome...).

Usage: python -m medtrinity_assets.bench_deid_text [--cases 400] [--show 10]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medtrinity_assets.imaging.deid_text import scrub_text
from medtrinity_assets.paths import realdata_dir

GIVEN_LISTED = ["James", "Maria", "Wei", "Fatima", "Thomas", "Sarah", "Patricia", "Giuseppe"]
GIVEN_UNLISTED = ["Ingrid", "Tomasz", "Chidi", "Priya", "Bjorn", "Aoife", "Keanu", "Oksana"]
SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Kowalski", "Alvarez", "O'Brien", "McAllister", "Schmidt",
            "Nakamura", "Haddad", "Novak", "Rossi", "Petrov", "Fitzgerald", "Oyelaran", "Brennan-Hale"]
TITLES = ["Dr.", "Dr", "Mrs", "Mr.", "Ms.", "Prof.", "Miss"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
INSTITUTIONS = ["St. Bartholomew's Hospital", "Ospedale San Raffaele", "Riverside Medical Center",
                "Massachusetts General Hospital", "Hôpital Saint-Louis", "Northfield Royal Infirmary",
                "University Hospital of Wales", "Klinikum Heidelberg"]
STREETS = ["Birchwood Avenue", "Oak Street", "Harbour Road", "Mill Lane", "Kingsley Drive"]
CITIES = ["Leeds", "Quxville", "Portland", "Galway"]

# Sentences a radiology note may hold that name no one: every word must survive.
MEDICAL_SENTENCES = [
    "History of Parkinson disease and Hodgkin lymphoma in remission.",
    "Known Down syndrome with atrioventricular septal defect repair.",
    "Crohn's disease with terminal ileitis; no Barrett's oesophagus on prior endoscopy.",
    "Kerley B lines at both bases, consistent with interstitial oedema.",
    "Hampton hump and Westermark sign are absent.",
    "Pancoast tumour of the left apex with rib destruction.",
    "Colles fracture of the right distal radius; Smith fracture excluded.",
    "Graves disease treated with radioiodine; Hashimoto thyroiditis in the mother.",
    "Wilms tumour in childhood, Ewing sarcoma excluded by biopsy.",
    "Swan-Ganz catheter tip in the right pulmonary artery.",
    "The Foley catheter and Hickman line are in place.",
    "Morgagni hernia at the right cardiophrenic angle.",
    "Schatzki ring noted at the gastro-oesophageal junction.",
    "Meckel diverticulum suspected in the right lower quadrant.",
    "Bochdalek hernia containing fat on the left.",
    "Virchow node enlargement in the left supraclavicular fossa.",
    "Alzheimer disease and Lewy body dementia were discussed.",
    "BI-RADS 4 mass in the Upper Outer Quadrant of the Left Breast.",
    "Glasgow Coma Scale 14 on arrival; Apgar scores were normal at birth.",
    "Gleason score 7 adenocarcinoma of the Prostate.",
    "Right Upper Lobe consolidation with air bronchograms.",
    "Left Lower Lobe collapse behind the Heart.",
    "Whipple procedure in 2015; pancreatic duct is dilated.",
    "Stevens-Johnson syndrome after carbamazepine.",
    "Budd-Chiari syndrome with hepatic vein thrombosis.",
    "Sjogren syndrome with parotid enlargement.",
    "Takayasu arteritis involving the aortic arch.",
    "COVID-19 pneumonia with SARS-CoV-2 PCR positive; T2N0M0 staging; BRCA1 carrier.",
    "HbA1c 7.2%, SpO2 92% on room air, CD4 count 350, BP 120/80, HR 96.",
    "Lesion at L5-S1 and C3-C4 disc protrusion on T2-weighted images.",
    "The 3.5 cm mass enhances; follow-up in 6 months is advised.",
    "May be related to infection; will reassess after treatment.",
    "Opacities may represent atelectasis; clinical correlation is advised.",
    "Echocardiography showed an ejection fraction of 55%.",
    # Caption-style text (ROCO, MedICaT): capitalised headings and named signs.
    "Computed Tomography of the Chest showing a Right Upper Lobe mass.",
    "Axial T2-weighted MRI of the Brain Stem demonstrating a hyperintense lesion.",
    "Li-Fraumeni syndrome and Ann Arbor staging IIB Hodgkin lymphoma.",
    "Sister Mary Joseph nodule at the umbilicus.",
    "Figure 3. Chest X-ray (PA view) of Case 2 with bilateral infiltrates.",
    "Transverse Ultrasound of the Left Kidney with Doppler.",
    "Mallory-Weiss tear and Boerhaave syndrome were considered.",
    "Histopathology (H&E, x40) of Wilms tumour with Homer Wright rosettes.",
    "Coronal FLAIR image shows a lesion in the Left Temporal Lobe.",
    "Hounsfield units measured 45 HU at 120 kVp; slice thickness 1.25 mm; 512 x 512 matrix.",
    "Kaplan-Meier survival curve and Cox regression, p = 0.003.",
    "Stanford type A dissection of the Ascending Aorta.",
    "Salter-Harris type II fracture of the distal radius; Child-Pugh class B cirrhosis.",
]


@dataclass
class Planted:
    kind: str
    value: str
    must_vanish: list[str]  # words of the value that must not survive


@dataclass
class Case:
    text: str
    planted: list[Planted] = field(default_factory=list)
    note_spans: list[tuple[int, int]] = field(default_factory=list)  # real-note regions
    real_identifier_spans: list[tuple[int, int]] = field(default_factory=list)  # notes' own dates


YEAR_ONLY = re.compile(r"^(?:19|20)[0-9]{2}$")
STOP = {"of", "at", "on", "the", "and"}


def _words(value: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z0-9'’.-]+", value) if w.strip(".-")]


def _vanishing(value: str, keep_titles: bool = False) -> list[str]:
    words = [w.strip(".,") for w in _words(value)]
    titles = {t.strip(".") for t in TITLES}
    return [w for w in words if w and w.lower() not in STOP and not YEAR_ONLY.match(w)
            and not (keep_titles and w in titles) and len(w) >= 2]


def _date_vanishing(date: str) -> list[str]:
    """A date is left when it is left whole or its month or weekday word is left (a bare day
    number is too common in notes, "covid-19", to be checked on its own)."""
    return [date] + [w for w in _vanishing(date) if w.isalpha()]


def _date(rng: random.Random) -> str:
    d, m, y = rng.randint(1, 28), rng.randint(1, 12), rng.randint(2015, 2021)
    month = MONTHS[m - 1]
    forms = [
        f"{month} {d}, {y}", f"{d} {month} {y}", f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}",
        f"{d}th of {month}, {y}", f"{month[:3]} {d}", f"{y}{m:02d}{d:02d}", f"{d}.{m}.{y}",
        f"Tuesday, {d} {month} {y} at 14:{d:02d}", f"{y}-{m:02d}-{d:02d} 09:{d:02d}", f"{m}/{d}/{y % 100:02d}",
    ]
    return rng.choice(forms)


def _age(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(90, 104)
    form = rng.choice([f"{n}-year-old", f"aged {n}", f"{n} years old", f"Age: {n}", f"{n} yo", f"{n} y/o",
                       f"{n} years of age", f"{n}M"])
    return form, str(n)


def _name(rng: random.Random, style: str, surnames) -> str:
    surname = next(surnames)
    if style == "title":
        given = rng.choice(GIVEN_LISTED + GIVEN_UNLISTED)
        return rng.choice([f"{rng.choice(TITLES)} {surname}", f"{rng.choice(TITLES)} {given} {surname}",
                           f"{rng.choice(TITLES)} {given[0]}. {surname}"])
    if style == "listed":
        return f"{rng.choice(GIVEN_LISTED)} {surname}"
    return f"{rng.choice(GIVEN_UNLISTED)} {surname}"


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(200, 989), rng.randint(200, 989), rng.randint(1000, 9999)
    return rng.choice([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+44 20 {b}{c % 10} {c}", f"+39 06 {c} {b}{a % 10}",
                       f"{a}.{b}.{c}", f"0161 {b} {c}"])


def _mrn(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(1000000, 99999999)
    value = rng.choice([f"MRN {n}", f"MRN: A{n}", f"Accession no. {n}", f"patient ID PX-{n % 100000}",
                        f"case #{n % 1000000:06d}", f"{n}{rng.randint(10, 99)}", f"ID {n % 10000000:07d}"])
    return value, value.split()[-1].lstrip("#")


def planted_cases(notes: list[str], count: int, seed: int = 7) -> list[Case]:
    """``count`` texts: a real note with identifier sentences planted between its sentences."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        note = notes[index % len(notes)]
        sentences = re.split(r"(?<=[.!?])\s+", note.strip())
        plants: list[tuple[str, list[Planted]]] = []
        # Distinct surnames within a case: a miss must not hide behind another plant's name.
        surnames = iter(rng.sample(SURNAMES, 8))
        for _ in range(rng.randint(2, 4)):
            plants.append(_one_plant(rng, surnames))
        # Planted sentences go at random sentence boundaries; the note's sentences stay whole.
        slots = sorted(rng.randint(0, len(sentences)) for _ in plants)
        planted, note_regions = [], []
        text = ""
        plant_iter = iter(zip(slots, plants))
        pending = next(plant_iter, None)
        for position in range(len(sentences) + 1):
            while pending and pending[0] == position:
                sentence, items = pending[1]
                text += ("" if not text else " ") + sentence
                planted += items
                pending = next(plant_iter, None)
            if position < len(sentences):
                start = len(text) + (1 if text else 0)
                text += ("" if not text else " ") + sentences[position]
                note_regions.append((start, len(text)))
        real = []
        for start, end in note_regions:
            # The notes' own dates are identifiers too: removing them is right, not over-scrubbing.
            for match in re.finditer(r"\b(?:January|February|March|April|May|June|July|August|September|"
                                     r"October|November|December) [0-9]{1,2}, [0-9]{4}", text[start:end]):
                real.append((start + match.start(), start + match.end()))
        cases.append(Case(text, planted, note_regions, real))
    return cases


def _one_plant(rng: random.Random, surnames) -> tuple[str, list[Planted]]:
    kind = rng.choice(["name_title", "name_cue", "name_listed", "name_unlisted", "date", "age", "phone",
                       "id", "email", "url", "address", "institution"])
    if kind == "name_title":
        name = _name(rng, "title", surnames)
        date = _date(rng)
        return f"Seen by {name} on {date}.", [Planted("name", name, _vanishing(name, keep_titles=True)),
                                              Planted("date", date, _date_vanishing(date))]
    if kind == "name_cue":
        name = _name(rng, rng.choice(["listed", "unlisted"]), surnames)
        return f"Case courtesy of {name}, radiology department.", [Planted("name", name, _vanishing(name))]
    if kind in ("name_listed", "name_unlisted"):
        # No title and no cue: the hardest case, in several sentence forms (not only the
        # subject-verb form the pass looks for).
        name = _name(rng, "listed" if kind == "name_listed" else "unlisted", surnames)
        template = rng.choice(["{} was admitted with fever.", "Spoke with {} about the findings.",
                               "Images sent to {} for review.", "{}, the patient's daughter, consented.",
                               "The family of {} asked for a copy."])
        return template.format(name), [Planted("name", name, _vanishing(name))]
    if kind == "date":
        date = _date(rng)
        return f"Imaging was repeated on {date}.", [Planted("date", date, _date_vanishing(date))]
    if kind == "age":
        form, number = _age(rng)
        return f"The patient is {form}.", [Planted("age", form, [number])]
    if kind == "phone":
        phone = _phone(rng)
        return f"For the images call {phone}.", [Planted("phone", phone, _vanishing(phone))]
    if kind == "id":
        value, code = _mrn(rng)
        return f"Images filed under {value}.", [Planted("id", value, [code])]
    if kind == "email":
        email = f"{rng.choice(SURNAMES).lower().replace(chr(39), '')}.{rng.randint(10, 99)}@clinic-example.org"
        return f"Questions to {email} please.", [Planted("email", email, [email])]
    if kind == "url":
        url = rng.choice(["https://example.org/case/", "http://www.example.net/patients/", "www.example.com/record?id="])
        url += str(rng.randint(10000, 99999))
        return f"Full record at {url} online.", [Planted("url", url, [url])]
    if kind == "address":
        street = f"{rng.randint(2, 480)} {rng.choice(STREETS)}"
        city = rng.choice(CITIES)
        code = rng.choice(["LS1 3EX", "MA 02115", "NY 10016", "SW1A 1AA"])
        return (f"Lives at {street}, {city}, {code}.",
                [Planted("address", f"{street}, {city}", _vanishing(f"{street}, {city}")),
                 Planted("postcode", code, [code.split()[-1]])])
    institution = rng.choice(INSTITUTIONS)
    return f"Transferred from {institution} for ventilation.", [Planted("institution", institution, _vanishing(institution))]


@dataclass
class Outcome:
    planted: Counter
    removed: Counter
    note_words: int
    note_words_removed: int
    medical_words: int
    medical_words_removed: int
    misses: list[tuple[str, str, str]]
    over: list[tuple[str, str]]


def _removed_words(text: str, spans, region: tuple[int, int], exclude: list[tuple[int, int]]) -> list[str]:
    lost = []
    for match in re.finditer(r"\S+", text[region[0]:region[1]]):
        start, end = region[0] + match.start(), region[0] + match.end()
        if any(s <= start < e for s, e in exclude):
            continue
        if any(span.start < end and start < span.end for span in spans):
            lost.append(match.group())
    return lost


def evaluate(notes: list[str], cases: int = 400, seed: int = 7) -> Outcome:
    planted, removed = Counter(), Counter()
    misses, over = [], []
    note_words = note_removed = 0
    for case in planted_cases(notes, cases, seed):
        result = scrub_text(case.text)
        # The tokens themselves ("[age 90 or older]") are not leftovers of what was planted.
        residue = result.text
        for span in result.spans:
            residue = residue.replace(span.replacement, " ")
        for item in case.planted:
            planted[item.kind] += 1
            left = [w for w in item.must_vanish if re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", residue)]
            if left:
                misses.append((item.kind, item.value, result.text))
            else:
                removed[item.kind] += 1
        for region in case.note_spans:
            note_words += len(case.text[region[0]:region[1]].split())
            lost = _removed_words(case.text, result.spans, region, case.real_identifier_spans)
            note_removed += len(lost)
            over += [(" ".join(lost), case.text[region[0]:region[1]])] if lost else []
    medical_words = medical_removed = 0
    for sentence in MEDICAL_SENTENCES:
        result = scrub_text(sentence)
        lost = _removed_words(sentence, result.spans, (0, len(sentence)), [])
        medical_words += len(sentence.split())
        medical_removed += len(lost)
        over += [(" ".join(lost), sentence)] if lost else []
    return Outcome(planted, removed, note_words, note_removed, medical_words, medical_removed, misses, over)


def covid_notes(root: Path | None = None) -> list[str]:
    """The distinct clinical notes of the real covid-chestxray extract, in file order."""
    path = (root or realdata_dir() / "covid_chestxray") / "metadata.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        return list(dict.fromkeys(r["clinical_notes"].strip() for r in csv.DictReader(handle) if r["clinical_notes"].strip()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--show", type=int, default=10, help="misses and over-scrubs to print")
    args = parser.parse_args(argv)
    notes = covid_notes()
    outcome = evaluate(notes, args.cases)
    print(f"{len(notes)} distinct real notes, {args.cases} planted cases")
    print(f"{'kind':<12} {'planted':>8} {'removed':>8} {'recall':>7}")
    for kind in sorted(outcome.planted):
        n, r = outcome.planted[kind], outcome.removed[kind]
        print(f"{kind:<12} {n:>8} {r:>8} {r / n:>7.1%}")
    total_n, total_r = sum(outcome.planted.values()), sum(outcome.removed.values())
    print(f"{'all':<12} {total_n:>8} {total_r:>8} {total_r / total_n:>7.1%}")
    print(f"over-scrubbing, real note words: {outcome.note_words_removed} of {outcome.note_words} removed "
          f"({outcome.note_words_removed / max(outcome.note_words, 1):.2%})")
    print(f"over-scrubbing, eponym/anatomy sentences: {outcome.medical_words_removed} of {outcome.medical_words} words removed")
    for kind, value, text in outcome.misses[: args.show]:
        print(f"MISS {kind}: {value!r} in {text!r}")
    for lost, text in list(dict.fromkeys(outcome.over))[: args.show]:
        print(f"OVER {lost!r} in {text!r}")


if __name__ == "__main__":
    main()
