/**
 * The 40 judged queries, each with what a relevant paper must be about. Grades come from what the
 * generator wrote a paper about (its facts), never from the paper's words, so a paper that only says
 * "heart attack" is as relevant to "MI" as one that says "myocardial infarction".
 */
export type QueryKind = "abbreviation" | "synonym" | "brand" | "lay" | "typo" | "phrase";

export interface Need {
  /** Condition ids (a topic's condition.id); a paper on one of them, or mentioning one on the side. */
  condition?: string[];
  /** Intervention ids or classes. */
  intervention?: string[];
  /** Outcome ids. */
  outcome?: string[];
}

export interface QuerySpec {
  id: string;
  text: string;
  kind: QueryKind;
  need: Need;
}

const q = (id: number, kind: QueryKind, text: string, need: Need): QuerySpec => ({
  id: `q${String(id).padStart(2, "0")}`,
  text,
  kind,
  need,
});

const MI = "myocardial infarction";
const SURVIVAL = ["overall survival", "progression-free survival", "event-free survival"];

export const QUERIES: QuerySpec[] = [
  q(1, "abbreviation", "MI mortality", { condition: [MI], outcome: ["mortality", "cardiovascular death"] }),
  q(2, "abbreviation", "HTN amlodipine", { condition: ["hypertension"], intervention: ["amlodipine"] }),
  q(3, "abbreviation", "AF anticoagulation", { condition: ["atrial fibrillation"], intervention: ["anticoagulant"] }),
  q(4, "abbreviation", "COPD exacerbations", {
    condition: ["chronic obstructive pulmonary disease"],
    outcome: ["exacerbations"],
  }),
  q(5, "abbreviation", "CKD eGFR decline", { condition: ["chronic kidney disease"], outcome: ["egfr decline"] }),
  q(6, "abbreviation", "T2DM HbA1c", { condition: ["type 2 diabetes"], outcome: ["hba1c"] }),
  q(7, "abbreviation", "NSCLC pembrolizumab", {
    condition: ["non small cell lung cancer"],
    intervention: ["pembrolizumab"],
  }),
  q(8, "abbreviation", "AKI dialysis", { condition: ["acute kidney injury"], intervention: ["hemodialysis"] }),
  q(9, "synonym", "myocardial infarction", { condition: [MI] }),
  q(10, "synonym", "acute renal failure", { condition: ["acute kidney injury"] }),
  q(11, "synonym", "cerebrovascular accident thrombolysis", {
    condition: ["ischemic stroke"],
    intervention: ["thrombolysis"],
  }),
  q(12, "synonym", "emphysema pulmonary rehabilitation", {
    condition: ["chronic obstructive pulmonary disease"],
    intervention: ["pulmonary rehabilitation"],
  }),
  q(13, "synonym", "major depression cognitive behavioural therapy", {
    condition: ["major depressive disorder"],
    intervention: ["cognitive behavioral therapy"],
  }),
  q(14, "synonym", "sleep apnoea CPAP", { condition: ["obstructive sleep apnea"], intervention: ["cpap"] }),
  q(15, "synonym", "coronavirus disease 2019 hospitalization", {
    condition: ["covid 19"],
    outcome: ["hospitalization"],
  }),
  q(16, "brand", "Glucophage", { intervention: ["metformin"] }),
  q(17, "brand", "Lipitor", { intervention: ["atorvastatin"] }),
  q(18, "brand", "Eliquis bleeding", { intervention: ["apixaban"], outcome: ["major bleeding"] }),
  q(19, "brand", "Ozempic weight loss", { intervention: ["semaglutide"], outcome: ["body weight"] }),
  q(20, "brand", "Keytruda survival", { intervention: ["pembrolizumab"], outcome: SURVIVAL }),
  q(21, "brand", "empagliflozin heart failure", { condition: ["heart failure"], intervention: ["empagliflozin"] }),
  q(22, "brand", "Humira Crohn's disease", { condition: ["crohn disease"], intervention: ["adalimumab"] }),
  q(23, "lay", "heart attack aspirin", { condition: [MI], intervention: ["aspirin"] }),
  q(24, "lay", "high blood pressure salt", { condition: ["hypertension"], intervention: ["salt reduction"] }),
  q(25, "lay", "blood thinners irregular heartbeat", {
    condition: ["atrial fibrillation"],
    intervention: ["anticoagulant"],
  }),
  q(26, "lay", "underactive thyroid", { condition: ["hypothyroidism"] }),
  q(27, "lay", "brittle bones fracture", { condition: ["osteoporosis"], outcome: ["hip fracture"] }),
  q(28, "lay", "ear infection children antibiotics", { condition: ["otitis media"], intervention: ["antibiotic"] }),
  q(29, "lay", "acid reflux", { condition: ["gastroesophageal reflux disease"] }),
  q(30, "typo", "metfromin", { intervention: ["metformin"] }),
  q(31, "typo", "pnuemonia antibiotics", { condition: ["community acquired pneumonia"], intervention: ["antibiotic"] }),
  q(32, "typo", "myocardial infraction", { condition: [MI] }),
  q(33, "typo", "alzhiemer donepezil", { condition: ["alzheimer disease"], intervention: ["donepezil"] }),
  q(34, "typo", "asthama inhaler", { condition: ["asthma"], intervention: ["fluticasone salmeterol", "albuterol"] }),
  q(35, "typo", "diabetis insulin", { condition: ["type 2 diabetes"], intervention: ["insulin glargine"] }),
  q(36, "phrase", '"heart failure" hospitalization', {
    condition: ["heart failure"],
    outcome: ["hf hospitalization", "hospitalization"],
  }),
  q(37, "phrase", '"deep brain stimulation" Parkinson', {
    condition: ["parkinson disease"],
    intervention: ["deep brain stimulation"],
  }),
  q(38, "phrase", '"septic shock" mortality', { condition: ["sepsis"], outcome: ["mortality"] }),
  q(39, "phrase", '"cognitive behavioral therapy" depression', {
    condition: ["major depressive disorder"],
    intervention: ["cognitive behavioral therapy"],
  }),
  q(40, "phrase", '"opioid use disorder" buprenorphine', {
    condition: ["opioid use disorder"],
    intervention: ["buprenorphine"],
  }),
];
