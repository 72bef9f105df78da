/**
 * What the judged corpus is about: research topics with the names a paper might use for each thing
 * (clinical, abbreviated, lay, brand), so that papers on one subject differ in wording the way real
 * ones do. Written for medmesh; the facts are general medical knowledge.
 *
 * `names`: how a paper may name the thing; the first is the clinical name. `abbr`, when set, is
 * introduced as "name (ABBR)" and then used alone.
 */
export interface Thing {
  id: string;
  names: string[];
  abbr?: string;
  /** Drug class or kind of intervention, for queries that name the class ("statin"). */
  cls?: string;
  /** Brand names, for drugs. */
  brands?: string[];
}

export interface Topic {
  id: string;
  specialty: string;
  condition: Thing;
  interventions: Thing[];
  outcomes: Thing[];
  populations: string[];
  /** Conditions a paper on this topic mentions on the side (comorbidities), by condition id. */
  related: string[];
}

const o = (id: string, ...names: string[]): Thing => ({ id, names });
const drug = (id: string, cls: string, brands: string[], ...names: string[]): Thing => ({
  id,
  cls,
  brands,
  names: [id, ...names],
});
const act = (id: string, cls: string, names: string[], abbr?: string): Thing => ({ id, cls, names, abbr });

const MORTALITY = o("mortality", "all-cause mortality", "death from any cause", "mortality");
const QOL = o("quality of life", "health-related quality of life", "quality of life");
const HOSP = o("hospitalization", "hospital admission", "hospitalization", "admission to hospital");
const ADHERENCE = o("adherence", "treatment adherence", "medication adherence");

export const TOPICS: Topic[] = [
  {
    id: "mi",
    specialty: "cardiology",
    condition: {
      id: "myocardial infarction",
      names: ["myocardial infarction", "acute myocardial infarction", "heart attack"],
      abbr: "MI",
    },
    interventions: [
      drug("atorvastatin", "statin", ["Lipitor"], "high-intensity atorvastatin"),
      drug("aspirin", "antiplatelet", [], "low-dose aspirin"),
      drug("clopidogrel", "antiplatelet", ["Plavix"]),
      drug("ticagrelor", "antiplatelet", ["Brilinta"]),
      act(
        "percutaneous coronary intervention",
        "revascularization",
        ["percutaneous coronary intervention", "primary angioplasty", "coronary stenting"],
        "PCI",
      ),
      act("cardiac rehabilitation", "rehabilitation", ["cardiac rehabilitation", "exercise-based rehabilitation"]),
    ],
    outcomes: [
      MORTALITY,
      o("reinfarction", "recurrent myocardial infarction", "reinfarction"),
      o("mace", "major adverse cardiovascular events"),
      HOSP,
    ],
    populations: [
      "older adults",
      "women",
      "patients with diabetes",
      "registry patients",
      "patients aged 40 to 75 years",
    ],
    related: ["hypertension", "type 2 diabetes", "heart failure"],
  },
  {
    id: "htn",
    specialty: "cardiology",
    condition: {
      id: "hypertension",
      names: ["hypertension", "high blood pressure", "arterial hypertension", "raised blood pressure"],
      abbr: "HTN",
    },
    interventions: [
      drug("amlodipine", "calcium channel blocker", ["Norvasc"]),
      drug("lisinopril", "ACE inhibitor", ["Zestril"]),
      drug("losartan", "angiotensin receptor blocker", ["Cozaar"]),
      drug("hydrochlorothiazide", "diuretic", [], "thiazide diuretic"),
      act("salt reduction", "lifestyle", ["dietary salt reduction", "sodium restriction", "a low-salt diet"]),
      act("home blood pressure monitoring", "monitoring", [
        "home blood pressure monitoring",
        "self-measured blood pressure",
      ]),
    ],
    outcomes: [
      o("systolic blood pressure", "systolic blood pressure", "office systolic pressure"),
      o("stroke incidence", "incident stroke", "stroke"),
      ADHERENCE,
    ],
    populations: [
      "adults in primary care",
      "Black adults",
      "older adults",
      "patients with chronic kidney disease",
      "adults attending rural clinics",
    ],
    related: ["chronic kidney disease", "type 2 diabetes", "ischemic stroke"],
  },
  {
    id: "af",
    specialty: "cardiology",
    condition: {
      id: "atrial fibrillation",
      names: ["atrial fibrillation", "nonvalvular atrial fibrillation", "irregular heartbeat"],
      abbr: "AF",
    },
    interventions: [
      drug("apixaban", "anticoagulant", ["Eliquis"]),
      drug("rivaroxaban", "anticoagulant", ["Xarelto"]),
      drug("warfarin", "anticoagulant", ["Coumadin"], "vitamin K antagonist"),
      act("catheter ablation", "ablation", ["catheter ablation", "pulmonary vein isolation"]),
    ],
    outcomes: [
      o("stroke", "stroke or systemic embolism", "ischemic stroke"),
      o("major bleeding", "major bleeding", "clinically relevant bleeding"),
      o("recurrence", "arrhythmia recurrence"),
    ],
    populations: [
      "older adults",
      "patients after cardiac surgery",
      "patients with chronic kidney disease",
      "community-dwelling adults",
    ],
    related: ["heart failure", "hypertension", "ischemic stroke"],
  },
  {
    id: "hf",
    specialty: "cardiology",
    condition: {
      id: "heart failure",
      names: [
        "heart failure",
        "chronic heart failure",
        "congestive heart failure",
        "heart failure with reduced ejection fraction",
      ],
      abbr: "HF",
    },
    interventions: [
      drug("sacubitril valsartan", "ARNI", ["Entresto"], "sacubitril/valsartan"),
      drug("empagliflozin", "SGLT2 inhibitor", ["Jardiance"]),
      drug("dapagliflozin", "SGLT2 inhibitor", ["Farxiga"]),
      drug("spironolactone", "mineralocorticoid receptor antagonist", ["Aldactone"]),
      drug("furosemide", "diuretic", ["Lasix"], "loop diuretic"),
    ],
    outcomes: [
      o("hf hospitalization", "hospitalization for heart failure", "heart failure admission"),
      o("cardiovascular death", "cardiovascular death"),
      o("nt-probnp", "NT-proBNP", "natriuretic peptide levels"),
      QOL,
    ],
    populations: [
      "patients with reduced ejection fraction",
      "older adults",
      "patients with diabetes",
      "recently discharged patients",
    ],
    related: ["atrial fibrillation", "chronic kidney disease", "type 2 diabetes"],
  },
  {
    id: "t2d",
    specialty: "endocrinology",
    condition: {
      id: "type 2 diabetes",
      names: ["type 2 diabetes", "type 2 diabetes mellitus", "adult-onset diabetes"],
      abbr: "T2DM",
    },
    interventions: [
      drug("metformin", "biguanide", ["Glucophage"]),
      drug("semaglutide", "GLP-1 receptor agonist", ["Ozempic"], "once-weekly semaglutide"),
      drug("empagliflozin", "SGLT2 inhibitor", ["Jardiance"]),
      drug("sitagliptin", "DPP-4 inhibitor", ["Januvia"]),
      drug("insulin glargine", "insulin", ["Lantus"], "basal insulin"),
      act("lifestyle intervention", "lifestyle", ["intensive lifestyle intervention", "diet and exercise counselling"]),
    ],
    outcomes: [
      o("hba1c", "glycated hemoglobin", "HbA1c"),
      o("body weight", "body weight", "weight loss"),
      o("hypoglycemia", "hypoglycemia", "low blood sugar episodes"),
      o("mace", "major adverse cardiovascular events"),
    ],
    populations: [
      "adults with obesity",
      "South Asian adults",
      "older adults",
      "newly diagnosed patients",
      "patients with chronic kidney disease",
    ],
    related: ["obesity", "chronic kidney disease", "hypertension"],
  },
  {
    id: "hypothyroid",
    specialty: "endocrinology",
    condition: { id: "hypothyroidism", names: ["hypothyroidism", "subclinical hypothyroidism", "underactive thyroid"] },
    interventions: [drug("levothyroxine", "thyroid hormone", ["Synthroid"], "thyroxine replacement")],
    outcomes: [o("tsh", "thyroid-stimulating hormone", "TSH levels"), QOL, o("fatigue", "fatigue scores")],
    populations: ["older adults", "pregnant women", "women in primary care"],
    related: ["obesity"],
  },
  {
    id: "obesity",
    specialty: "endocrinology",
    condition: { id: "obesity", names: ["obesity", "severe obesity"] },
    interventions: [
      drug("semaglutide", "GLP-1 receptor agonist", ["Wegovy"]),
      drug("tirzepatide", "incretin agonist", ["Mounjaro"]),
      act("bariatric surgery", "surgery", ["bariatric surgery", "sleeve gastrectomy", "gastric bypass"]),
    ],
    outcomes: [o("body weight", "body weight", "weight loss"), o("diabetes remission", "remission of diabetes"), QOL],
    populations: ["adults without diabetes", "adolescents", "adults with knee osteoarthritis"],
    related: ["type 2 diabetes", "obstructive sleep apnea"],
  },
  {
    id: "osteoporosis",
    specialty: "endocrinology",
    condition: { id: "osteoporosis", names: ["osteoporosis", "postmenopausal osteoporosis", "low bone density"] },
    interventions: [
      drug("alendronate", "bisphosphonate", ["Fosamax"]),
      drug("denosumab", "RANKL inhibitor", ["Prolia"]),
      act("vitamin d supplementation", "supplement", ["vitamin D supplementation", "calcium and vitamin D"]),
    ],
    outcomes: [
      o("hip fracture", "hip fracture", "fragility fracture"),
      o("bone mineral density", "bone mineral density"),
    ],
    populations: ["postmenopausal women", "older men", "nursing home residents"],
    related: [],
  },
  {
    id: "breast",
    specialty: "oncology",
    condition: { id: "breast cancer", names: ["breast cancer", "early breast cancer", "breast carcinoma"] },
    interventions: [
      drug("tamoxifen", "endocrine therapy", []),
      drug("trastuzumab", "HER2-targeted therapy", ["Herceptin"]),
      act("mammography", "screening", ["screening mammography", "mammographic screening"]),
    ],
    outcomes: [
      o("overall survival", "overall survival"),
      o("recurrence", "disease recurrence", "invasive disease-free survival"),
      o("detection", "cancer detection rate"),
    ],
    populations: ["premenopausal women", "women aged 50 to 69 years", "HER2-positive patients"],
    related: [],
  },
  {
    id: "nsclc",
    specialty: "oncology",
    condition: {
      id: "non small cell lung cancer",
      names: ["non-small cell lung cancer", "advanced non-small cell lung cancer", "lung adenocarcinoma"],
      abbr: "NSCLC",
    },
    interventions: [
      drug("pembrolizumab", "immunotherapy", ["Keytruda"], "anti-PD-1 immunotherapy"),
      drug("nivolumab", "immunotherapy", ["Opdivo"]),
      drug("osimertinib", "EGFR inhibitor", ["Tagrisso"]),
    ],
    outcomes: [
      o("overall survival", "overall survival"),
      o("progression-free survival", "progression-free survival"),
      o("immune-related adverse events", "immune-related adverse events"),
    ],
    populations: [
      "previously untreated patients",
      "patients with EGFR mutations",
      "patients with high PD-L1 expression",
    ],
    related: [],
  },
  {
    id: "crc",
    specialty: "oncology",
    condition: { id: "colorectal cancer", names: ["colorectal cancer", "colon cancer", "bowel cancer"], abbr: "CRC" },
    interventions: [
      act("colonoscopy", "screening", ["screening colonoscopy", "colonoscopy"]),
      drug("bevacizumab", "anti-VEGF therapy", ["Avastin"]),
      act("fecal immunochemical test", "screening", ["faecal immunochemical testing", "stool-based screening"], "FIT"),
    ],
    outcomes: [
      o("detection", "adenoma detection rate", "cancer detection"),
      o("overall survival", "overall survival"),
      MORTALITY,
    ],
    populations: ["adults aged 45 to 75 years", "patients with metastatic disease", "screening programme participants"],
    related: [],
  },
  {
    id: "all",
    specialty: "oncology",
    condition: {
      id: "acute lymphoblastic leukemia",
      names: ["acute lymphoblastic leukemia", "childhood acute lymphoblastic leukaemia"],
      abbr: "ALL",
    },
    interventions: [
      drug("methotrexate", "chemotherapy", [], "high-dose methotrexate"),
      act("chemotherapy", "chemotherapy", ["risk-adapted chemotherapy", "multi-agent chemotherapy"]),
    ],
    outcomes: [o("event-free survival", "event-free survival"), o("relapse", "relapse", "bone marrow relapse")],
    populations: ["children aged 1 to 18 years", "adolescents and young adults"],
    related: [],
  },
  {
    id: "stroke",
    specialty: "neurology",
    condition: {
      id: "ischemic stroke",
      names: ["acute ischemic stroke", "ischaemic stroke", "stroke", "cerebrovascular accident"],
    },
    interventions: [
      drug("alteplase", "thrombolysis", [], "intravenous thrombolysis", "tissue plasminogen activator"),
      act("mechanical thrombectomy", "thrombectomy", ["mechanical thrombectomy", "endovascular thrombectomy"]),
      drug("aspirin", "antiplatelet", [], "early aspirin"),
    ],
    outcomes: [
      o("functional independence", "functional independence at 90 days", "modified Rankin Scale score"),
      o("intracranial hemorrhage", "symptomatic intracranial hemorrhage"),
      MORTALITY,
    ],
    populations: ["patients presenting within 4.5 hours", "patients with large vessel occlusion", "older adults"],
    related: ["atrial fibrillation", "hypertension"],
  },
  {
    id: "migraine",
    specialty: "neurology",
    condition: { id: "migraine", names: ["migraine", "chronic migraine", "episodic migraine"] },
    interventions: [
      drug("sumatriptan", "triptan", ["Imitrex"]),
      act("cgrp antibody", "preventive", ["anti-CGRP monoclonal antibodies", "CGRP-targeted prevention"]),
    ],
    outcomes: [o("headache days", "monthly migraine days", "headache days"), QOL],
    populations: ["adults", "adolescents", "women"],
    related: [],
  },
  {
    id: "parkinson",
    specialty: "neurology",
    condition: {
      id: "parkinson disease",
      names: ["Parkinson's disease", "Parkinson disease", "idiopathic Parkinson's disease"],
    },
    interventions: [
      drug("levodopa", "dopaminergic therapy", ["Sinemet"], "carbidopa-levodopa"),
      act("deep brain stimulation", "neuromodulation", ["deep brain stimulation", "subthalamic stimulation"], "DBS"),
    ],
    outcomes: [o("motor function", "motor symptoms", "UPDRS motor score"), QOL],
    populations: ["patients with motor fluctuations", "older adults", "early-stage patients"],
    related: ["dementia"],
  },
  {
    id: "alzheimer",
    specialty: "neurology",
    condition: { id: "alzheimer disease", names: ["Alzheimer's disease", "Alzheimer disease", "Alzheimer's dementia"] },
    interventions: [
      drug("donepezil", "cholinesterase inhibitor", ["Aricept"]),
      act("cognitive training", "cognitive", ["computerised cognitive training", "cognitive stimulation"]),
    ],
    outcomes: [o("cognitive decline", "cognitive decline", "cognition"), o("caregiver burden", "caregiver burden")],
    populations: [
      "patients with mild to moderate disease",
      "community-dwelling older adults",
      "nursing home residents",
    ],
    related: ["dementia"],
  },
  {
    id: "epilepsy",
    specialty: "neurology",
    condition: { id: "epilepsy", names: ["epilepsy", "focal epilepsy", "seizure disorder"] },
    interventions: [
      drug("levetiracetam", "antiseizure medication", ["Keppra"]),
      drug("valproate", "antiseizure medication", ["Depakote"], "sodium valproate"),
    ],
    outcomes: [o("seizure freedom", "seizure freedom", "seizure frequency"), o("adverse events", "adverse events")],
    populations: ["children", "women of childbearing age", "adults with newly diagnosed epilepsy"],
    related: [],
  },
  {
    id: "covid",
    specialty: "infectious disease",
    condition: { id: "covid 19", names: ["COVID-19", "SARS-CoV-2 infection", "coronavirus disease 2019"] },
    interventions: [
      drug("nirmatrelvir ritonavir", "antiviral", ["Paxlovid"], "nirmatrelvir-ritonavir"),
      drug("remdesivir", "antiviral", []),
      act("vaccination", "vaccine", ["mRNA vaccination", "booster vaccination"]),
      drug("dexamethasone", "corticosteroid", [], "low-dose dexamethasone"),
    ],
    outcomes: [HOSP, MORTALITY, o("long covid", "post-acute sequelae", "persistent symptoms")],
    populations: ["high-risk outpatients", "hospitalised adults", "healthcare workers", "nursing home residents"],
    related: ["type 2 diabetes", "obesity"],
  },
  {
    id: "cap",
    specialty: "infectious disease",
    condition: {
      id: "community acquired pneumonia",
      names: ["community-acquired pneumonia", "pneumonia", "lower respiratory tract infection"],
    },
    interventions: [
      drug("amoxicillin", "antibiotic", ["Amoxil"]),
      drug("azithromycin", "antibiotic", ["Zithromax"], "macrolide"),
      drug("ceftriaxone", "antibiotic", ["Rocephin"]),
    ],
    outcomes: [
      o("clinical cure", "clinical cure", "treatment failure"),
      MORTALITY,
      o("length of stay", "length of hospital stay"),
    ],
    populations: ["hospitalised adults", "children under five years", "older adults"],
    related: ["chronic obstructive pulmonary disease"],
  },
  {
    id: "uti",
    specialty: "infectious disease",
    condition: {
      id: "urinary tract infection",
      names: ["urinary tract infection", "uncomplicated cystitis", "bladder infection"],
      abbr: "UTI",
    },
    interventions: [
      drug("ciprofloxacin", "antibiotic", ["Cipro"], "fluoroquinolone"),
      act("short-course antibiotics", "antibiotic", [
        "short-course antibiotic therapy",
        "three-day antibiotic treatment",
      ]),
    ],
    outcomes: [o("clinical cure", "clinical cure", "symptom resolution"), o("resistance", "antimicrobial resistance")],
    populations: ["women in primary care", "older adults in care homes", "children"],
    related: [],
  },
  {
    id: "sepsis",
    specialty: "infectious disease",
    condition: { id: "sepsis", names: ["sepsis", "septic shock", "severe sepsis"] },
    interventions: [
      act("early antibiotics", "antibiotic", ["early antibiotic administration", "antibiotics within one hour"]),
      act("fluid resuscitation", "resuscitation", ["fluid resuscitation", "balanced crystalloids"]),
      drug("hydrocortisone", "corticosteroid", []),
    ],
    outcomes: [MORTALITY, o("lactate clearance", "lactate clearance"), o("organ support", "vasopressor-free days")],
    populations: ["adults in the emergency department", "intensive care patients", "neonates"],
    related: ["acute kidney injury", "community acquired pneumonia"],
  },
  {
    id: "hiv",
    specialty: "infectious disease",
    condition: { id: "hiv infection", names: ["HIV infection", "HIV", "human immunodeficiency virus infection"] },
    interventions: [
      act("pre exposure prophylaxis", "prevention", ["pre-exposure prophylaxis", "daily oral PrEP"]),
      drug("tenofovir", "antiretroviral", ["Viread"], "tenofovir-based therapy"),
    ],
    outcomes: [
      o("incidence", "HIV incidence", "new infections"),
      ADHERENCE,
      o("viral suppression", "viral suppression"),
    ],
    populations: ["men who have sex with men", "adolescent girls and young women", "serodiscordant couples"],
    related: [],
  },
  {
    id: "flu",
    specialty: "infectious disease",
    condition: { id: "influenza", names: ["influenza", "seasonal influenza", "flu"] },
    interventions: [
      drug("oseltamivir", "antiviral", ["Tamiflu"]),
      act("vaccination", "vaccine", ["influenza vaccination", "high-dose flu vaccine"]),
    ],
    outcomes: [HOSP, o("symptom duration", "time to symptom alleviation")],
    populations: ["older adults", "children", "pregnant women"],
    related: [],
  },
  {
    id: "copd",
    specialty: "pulmonology",
    condition: {
      id: "chronic obstructive pulmonary disease",
      names: ["chronic obstructive pulmonary disease", "emphysema", "chronic bronchitis"],
      abbr: "COPD",
    },
    interventions: [
      drug("tiotropium", "long-acting bronchodilator", ["Spiriva"]),
      act("pulmonary rehabilitation", "rehabilitation", ["pulmonary rehabilitation", "exercise training"]),
      act("smoking cessation", "behavioural", ["smoking cessation support", "quitting smoking"]),
    ],
    outcomes: [o("exacerbations", "exacerbations", "acute exacerbations"), o("fev1", "FEV1", "lung function"), QOL],
    populations: ["former smokers", "patients after hospital discharge", "older adults"],
    related: ["heart failure", "community acquired pneumonia"],
  },
  {
    id: "asthma",
    specialty: "pulmonology",
    condition: { id: "asthma", names: ["asthma", "severe asthma", "persistent asthma"] },
    interventions: [
      drug("fluticasone salmeterol", "inhaled corticosteroid", ["Advair"], "inhaled corticosteroid"),
      drug("montelukast", "leukotriene antagonist", ["Singulair"]),
      drug("albuterol", "bronchodilator", ["Ventolin"], "salbutamol"),
    ],
    outcomes: [o("exacerbations", "exacerbations", "asthma attacks"), o("asthma control", "asthma control")],
    populations: ["children", "adults", "urban adolescents"],
    related: [],
  },
  {
    id: "osa",
    specialty: "pulmonology",
    condition: {
      id: "obstructive sleep apnea",
      names: ["obstructive sleep apnea", "obstructive sleep apnoea", "sleep apnea"],
      abbr: "OSA",
    },
    interventions: [
      act("cpap", "device", ["continuous positive airway pressure", "CPAP therapy"]),
      act("mandibular advancement", "device", ["mandibular advancement devices", "oral appliance therapy"]),
    ],
    outcomes: [
      o("daytime sleepiness", "daytime sleepiness", "Epworth Sleepiness Scale score"),
      o("systolic blood pressure", "blood pressure"),
    ],
    populations: ["adults with obesity", "patients with resistant hypertension", "commercial drivers"],
    related: ["hypertension", "obesity"],
  },
  {
    id: "ckd",
    specialty: "nephrology",
    condition: {
      id: "chronic kidney disease",
      names: ["chronic kidney disease", "chronic renal insufficiency", "diabetic kidney disease"],
      abbr: "CKD",
    },
    interventions: [
      drug("dapagliflozin", "SGLT2 inhibitor", ["Farxiga"]),
      drug("lisinopril", "ACE inhibitor", ["Zestril"]),
      act("hemodialysis", "dialysis", ["haemodialysis", "maintenance dialysis"]),
    ],
    outcomes: [
      o("egfr decline", "eGFR decline", "decline in estimated glomerular filtration rate"),
      o("kidney failure", "kidney failure", "end-stage kidney disease"),
      MORTALITY,
    ],
    populations: ["patients with type 2 diabetes", "older adults", "patients with proteinuria"],
    related: ["type 2 diabetes", "hypertension"],
  },
  {
    id: "aki",
    specialty: "nephrology",
    condition: { id: "acute kidney injury", names: ["acute kidney injury", "acute renal failure"], abbr: "AKI" },
    interventions: [
      act("hemodialysis", "dialysis", ["renal replacement therapy", "early dialysis"]),
      act("fluid resuscitation", "resuscitation", ["balanced crystalloids", "intravenous hydration"]),
    ],
    outcomes: [o("dialysis dependence", "dialysis dependence"), MORTALITY, o("kidney recovery", "renal recovery")],
    populations: ["critically ill adults", "patients after cardiac surgery", "patients receiving contrast"],
    related: ["sepsis"],
  },
  {
    id: "mdd",
    specialty: "psychiatry",
    condition: {
      id: "major depressive disorder",
      names: ["major depressive disorder", "major depression", "depression"],
      abbr: "MDD",
    },
    interventions: [
      drug("sertraline", "SSRI", ["Zoloft"]),
      drug("escitalopram", "SSRI", ["Lexapro"]),
      act("cognitive behavioral therapy", "psychotherapy", [
        "cognitive behavioral therapy",
        "cognitive behavioural therapy",
        "internet-delivered CBT",
      ]),
    ],
    outcomes: [
      o("remission", "remission", "response rates"),
      o("depressive symptoms", "depressive symptoms", "PHQ-9 scores"),
    ],
    populations: ["adults in primary care", "older adults", "university students", "postpartum women"],
    related: [],
  },
  {
    id: "adhd",
    specialty: "psychiatry",
    condition: {
      id: "attention deficit hyperactivity disorder",
      names: ["attention deficit hyperactivity disorder", "attention-deficit/hyperactivity disorder"],
      abbr: "ADHD",
    },
    interventions: [
      drug("methylphenidate", "stimulant", ["Ritalin"]),
      act("parent training", "behavioural", ["parent training", "behavioural parent training"]),
    ],
    outcomes: [
      o("symptom severity", "core symptoms", "symptom severity"),
      o("school performance", "academic performance"),
    ],
    populations: ["school-aged children", "adolescents", "adults"],
    related: [],
  },
  {
    id: "oud",
    specialty: "psychiatry",
    condition: { id: "opioid use disorder", names: ["opioid use disorder", "opioid dependence", "opioid addiction"] },
    interventions: [
      drug("buprenorphine", "opioid agonist therapy", ["Suboxone"], "buprenorphine-naloxone"),
      drug("naloxone", "overdose reversal", ["Narcan"], "take-home naloxone"),
    ],
    outcomes: [o("retention", "retention in treatment"), o("overdose", "overdose death", "opioid overdose")],
    populations: ["adults leaving prison", "pregnant women", "emergency department patients"],
    related: [],
  },
  {
    id: "ptsd",
    specialty: "psychiatry",
    condition: {
      id: "post traumatic stress disorder",
      names: ["post-traumatic stress disorder", "posttraumatic stress disorder"],
      abbr: "PTSD",
    },
    interventions: [
      act("prolonged exposure", "psychotherapy", ["prolonged exposure therapy", "trauma-focused psychotherapy"]),
      drug("sertraline", "SSRI", ["Zoloft"]),
    ],
    outcomes: [o("ptsd symptoms", "symptom severity", "CAPS-5 score"), o("remission", "remission")],
    populations: ["military veterans", "refugees", "survivors of assault"],
    related: ["major depressive disorder"],
  },
  {
    id: "bronchiolitis",
    specialty: "pediatrics",
    condition: {
      id: "bronchiolitis",
      names: ["bronchiolitis", "RSV bronchiolitis", "respiratory syncytial virus infection"],
    },
    interventions: [
      act("high-flow oxygen", "respiratory support", ["high-flow nasal cannula oxygen", "high-flow oxygen therapy"]),
      act("nirsevimab", "immunisation", ["nirsevimab", "monoclonal antibody prophylaxis"]),
    ],
    outcomes: [o("icu admission", "intensive care admission"), HOSP],
    populations: ["infants under 12 months", "preterm infants"],
    related: ["preterm birth"],
  },
  {
    id: "otitis",
    specialty: "pediatrics",
    condition: { id: "otitis media", names: ["acute otitis media", "otitis media", "middle ear infection"] },
    interventions: [
      drug("amoxicillin", "antibiotic", ["Amoxil"]),
      act("watchful waiting", "observation", ["watchful waiting", "delayed antibiotic prescribing"]),
    ],
    outcomes: [o("clinical cure", "symptom resolution", "treatment failure"), o("adverse events", "adverse events")],
    populations: ["children aged 6 to 23 months", "children in primary care"],
    related: [],
  },
  {
    id: "preterm",
    specialty: "pediatrics",
    condition: { id: "preterm birth", names: ["preterm birth", "premature birth", "very preterm infants"] },
    interventions: [
      act("antenatal corticosteroids", "corticosteroid", ["antenatal corticosteroids", "antenatal betamethasone"]),
      act("kangaroo care", "care", ["kangaroo mother care", "skin-to-skin contact"]),
    ],
    outcomes: [o("neonatal mortality", "neonatal mortality"), o("neurodevelopment", "neurodevelopmental outcome")],
    populations: ["infants born before 32 weeks", "infants in low-income settings"],
    related: ["bronchiolitis"],
  },
  {
    id: "gerd",
    specialty: "gastroenterology",
    condition: {
      id: "gastroesophageal reflux disease",
      names: ["gastroesophageal reflux disease", "reflux disease", "acid reflux"],
      abbr: "GERD",
    },
    interventions: [
      drug("omeprazole", "proton pump inhibitor", ["Prilosec"]),
      act("fundoplication", "surgery", ["laparoscopic fundoplication"]),
    ],
    outcomes: [o("symptom relief", "heartburn-free days", "symptom relief"), QOL],
    populations: ["adults with typical symptoms", "patients with refractory symptoms"],
    related: ["obesity"],
  },
  {
    id: "crohn",
    specialty: "gastroenterology",
    condition: { id: "crohn disease", names: ["Crohn's disease", "Crohn disease", "ileal Crohn's disease"] },
    interventions: [
      drug("adalimumab", "anti-TNF therapy", ["Humira"]),
      drug("infliximab", "anti-TNF therapy", ["Remicade"]),
    ],
    outcomes: [o("remission", "clinical remission", "endoscopic remission"), o("surgery", "need for surgery")],
    populations: ["adults with moderate to severe disease", "children and adolescents"],
    related: [],
  },
  {
    id: "ra",
    specialty: "rheumatology",
    condition: { id: "rheumatoid arthritis", names: ["rheumatoid arthritis", "early rheumatoid arthritis"] },
    interventions: [
      drug("methotrexate", "DMARD", [], "methotrexate monotherapy"),
      drug("adalimumab", "anti-TNF therapy", ["Humira"]),
    ],
    outcomes: [
      o("disease activity", "disease activity", "DAS28 remission"),
      o("radiographic progression", "radiographic progression"),
    ],
    populations: ["adults with early disease", "patients with inadequate response to methotrexate"],
    related: [],
  },
  {
    id: "oa",
    specialty: "rheumatology",
    condition: { id: "osteoarthritis", names: ["knee osteoarthritis", "osteoarthritis of the knee", "osteoarthritis"] },
    interventions: [
      act("total knee arthroplasty", "surgery", ["total knee arthroplasty", "knee replacement"]),
      drug("naproxen", "NSAID", ["Aleve"], "oral NSAIDs"),
      act("exercise therapy", "exercise", ["supervised exercise therapy", "physiotherapy-led exercise"]),
    ],
    outcomes: [o("pain", "knee pain", "pain scores"), o("function", "physical function")],
    populations: ["adults over 50", "patients with obesity", "older adults"],
    related: ["obesity"],
  },
];

/** Documents that are not about a topic at all: words that overlap query words in another sense. */
export const DISTRACTORS: { title: string; specialty: string; sentences: string[] }[] = [
  {
    title: "Panic attacks in emergency department attenders with chest pain",
    specialty: "psychiatry",
    sentences: [
      "Panic attacks are a frequent cause of acute chest discomfort in emergency care.",
      "We studied consecutive attenders whose cardiac work-up was negative.",
      "A structured psychiatric interview identified panic disorder in a third of them.",
      "Brief psychological treatment reduced repeat attendance over six months.",
    ],
  },
  {
    title: "Intraocular pressure after cataract surgery",
    specialty: "ophthalmology",
    sentences: [
      "Raised intraocular pressure is a common transient finding after phacoemulsification.",
      "We measured pressure at one day, one week and one month in a cohort of eyes.",
      "Peaks were more frequent in eyes with pseudoexfoliation.",
      "Routine early checks identified those who needed topical treatment.",
    ],
  },
  {
    title: "Pressure injuries in intensive care: a quality improvement programme",
    specialty: "critical care",
    sentences: [
      "Hospital-acquired pressure injuries remain frequent among ventilated patients.",
      "A bundle of repositioning, skin inspection and support surfaces was introduced.",
      "Incidence fell over two years across the participating units.",
      "Staff education and audit sustained the change.",
    ],
  },
  {
    title: "Heart rate variability as a marker of training load in athletes",
    specialty: "sports medicine",
    sentences: [
      "Heart rate variability reflects autonomic balance and recovery.",
      "Elite rowers recorded morning measurements over a season.",
      "Falls in variability preceded self-reported fatigue by several days.",
      "The measure may help coaches plan training load.",
    ],
  },
  {
    title: "Sugar-sweetened beverage taxes and dental caries in children",
    specialty: "public health",
    sentences: [
      "Taxes on sugar-sweetened drinks aim to reduce consumption.",
      "We compared dental caries in schoolchildren before and after a national levy.",
      "Extractions under general anaesthesia declined after implementation.",
      "Fiscal policy may complement school-based oral health programmes.",
    ],
  },
  {
    title: "Failure modes of infusion pumps reported to a national incident system",
    specialty: "patient safety",
    sentences: [
      "Infusion pump failure can interrupt critical medication delivery.",
      "We classified incident reports filed over a decade.",
      "Software faults and occlusion alarms were the commonest failure modes.",
      "Design standards should address alarm fatigue.",
    ],
  },
  {
    title: "Blood donation eligibility and deferral rates among young adults",
    specialty: "transfusion medicine",
    sentences: [
      "Blood services depend on recruiting and retaining young donors.",
      "We analysed deferrals at first attempted donation.",
      "Low haemoglobin and recent travel were the commonest reasons.",
      "Targeted information could reduce avoidable deferrals.",
    ],
  },
  {
    title: "Stroke volume monitoring during major abdominal surgery",
    specialty: "anaesthesia",
    sentences: [
      "Goal-directed fluid therapy uses stroke volume to guide boluses.",
      "Patients undergoing colorectal resection were randomised to monitored or routine care.",
      "Length of stay and complications did not differ between groups.",
      "Routine use of monitoring is not supported for low-risk patients.",
    ],
  },
  {
    title: "Screen time, sleep and attention in adolescents",
    specialty: "pediatrics",
    sentences: [
      "Evening screen use has been linked with shorter sleep.",
      "A school cohort wore actigraphs and completed attention tasks.",
      "Later bedtimes partly explained lower attention scores.",
      "Sleep hygiene advice should address device use.",
    ],
  },
  {
    title: "Antibiotic prescribing for sore throat in telemedicine consultations",
    specialty: "infectious disease",
    sentences: [
      "Remote consultations have grown rapidly in primary care.",
      "We compared antibiotic prescribing for pharyngitis between video and in-person visits.",
      "Prescribing was higher in remote visits after adjustment for case mix.",
      "Stewardship programmes should include telemedicine.",
    ],
  },
];
