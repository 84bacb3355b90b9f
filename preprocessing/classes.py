"""Exact class and region names of the public datasets (spelling and order matter when indexing arrays)."""

# MIMIC-CXR-JPG chexpert/negbio CSV column order (alphabetical).
CHEXPERT_14: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)

# VinDr-CXR: 22 local labels (with boxes) then 6 global labels, in the image_labels_train.csv column order.
VINDR_LOCAL_22: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
VINDR_GLOBAL_TRAIN: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
VINDR_GLOBAL_TEST: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other disease", "No finding")
VINDR_LABELS_28: tuple[str, ...] = VINDR_LOCAL_22 + VINDR_GLOBAL_TEST  # canonical (test-file) spelling
VINDR_NO_FINDING = "No finding"

# NIH ChestX-ray14 image labels and the 8 box classes (BBox_List spells Infiltration as "Infiltrate").
NIH_14: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NIH_BOX_8: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)
NIH_NO_FINDING = "No Finding"
NIH_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

# MS-CXR categories (CheXpert spelling).
MS_CXR_8: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumonia",
    "Pneumothorax",
)

# Chest ImaGenome: the 36 detectable bbox names and the 29 used by ChEX/RGRG (same order as the reference).
CIG_BBOX_NAMES_36: tuple[str, ...] = (
    "right lung", "right upper lung zone", "right mid lung zone", "right lower lung zone", "right hilar structures",
    "right apical zone", "right costophrenic angle", "right cardiophrenic angle", "right hemidiaphragm",
    "left lung", "left upper lung zone", "left mid lung zone", "left lower lung zone", "left hilar structures",
    "left apical zone", "left costophrenic angle", "left hemidiaphragm", "trachea", "spine", "right clavicle",
    "left clavicle", "aortic arch", "mediastinum", "upper mediastinum", "svc", "cardiac silhouette",
    "left cardiac silhouette", "right cardiac silhouette", "cavoatrial junction", "right atrium",
    "descending aorta", "carina", "left upper abdomen", "right upper abdomen", "abdomen",
    "left cardiophrenic angle",
)
CIG_ANATOMY_29: tuple[str, ...] = (
    "right lung", "right upper lung zone", "right mid lung zone", "right lower lung zone", "right hilar structures",
    "right apical zone", "right costophrenic angle", "right hemidiaphragm", "left lung", "left upper lung zone",
    "left mid lung zone", "left lower lung zone", "left hilar structures", "left apical zone",
    "left costophrenic angle", "left hemidiaphragm", "trachea", "spine", "right clavicle", "left clavicle",
    "aortic arch", "mediastinum", "upper mediastinum", "svc", "cardiac silhouette", "cavoatrial junction",
    "right atrium", "carina", "abdomen",
)

# Chest ImaGenome finding vocabularies used as ChEX classes (43 anatomical findings + 10 diseases).
CIG_ANATOMICAL_FINDINGS_43: tuple[str, ...] = (
    "lung opacity", "airspace opacity", "consolidation", "infiltration", "atelectasis", "linear/patchy atelectasis",
    "lobar/segmental collapse", "pulmonary edema/hazy opacity", "vascular congestion", "vascular redistribution",
    "increased reticular markings/ild pattern", "pleural effusion", "costophrenic angle blunting",
    "pleural/parenchymal scarring", "bronchiectasis", "enlarged cardiac silhouette", "mediastinal displacement",
    "mediastinal widening", "enlarged hilum", "tortuous aorta", "vascular calcification", "pneumomediastinum",
    "pneumothorax", "hydropneumothorax", "lung lesion", "mass/nodule (not otherwise specified)",
    "multiple masses/nodules", "calcified nodule", "superior mediastinal mass/enlargement", "rib fracture",
    "clavicle fracture", "spinal fracture", "hyperaeration", "cyst/bullae", "elevated hemidiaphragm",
    "diaphragmatic eventration (benign)", "sub-diaphragmatic air", "subcutaneous air", "hernia", "scoliosis",
    "spinal degenerative changes", "shoulder osteoarthritis", "bone lesion",
)
CIG_DISEASES_10: tuple[str, ...] = (
    "pneumonia", "fluid overload/heart failure", "copd/emphysema", "granulomatous disease",
    "interstitial lung disease", "goiter", "lung cancer", "aspiration", "alveolar hemorrhage", "pericardial effusion",
)

MIMIC_SPLIT_MAP: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}
FRONTAL_VIEWS: frozenset[str] = frozenset({"PA", "AP"})
