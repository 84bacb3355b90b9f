"""The Parquet schema of every ingested table (one schema for all sources; a source leaves what it lacks empty).

Layout on disk: `<out>/tables/source=<source>/split=<split>/*.parquet` (hive partitions, so `source` and
`split` come back as columns with `polars.scan_parquet(..., hive_partitioning=True)`).

Boxes are normalized (cx, cy, w, h) in the stored square image: the original is resized so its short side equals
`image_size`, then centre-cropped. Label values: 1 positive, 0 negative, -1 uncertain (CheXpert); a label that a
source does not mention is absent from the list rather than stored as 0.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

BOX = pa.struct([("name", pa.string()), ("cx", pa.float32()), ("cy", pa.float32()), ("w", pa.float32()), ("h", pa.float32())])
LABEL = pa.struct([("name", pa.string()), ("value", pa.int8())])
REGION_LABEL = pa.struct([("region", pa.string()), ("finding", pa.string()), ("value", pa.int8())])
REGION_PHRASES = pa.struct([("region", pa.string()), ("phrases", pa.list_(pa.string()))])
GROUNDED_PHRASE = pa.struct([("phrase", pa.string()), ("category", pa.string()), ("boxes", pa.list_(BOX))])

PARTITION_COLUMNS = ("source", "split")

SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),          # mimic_cxr | vindr_cxr | nih_cxr | ms_cxr (partition)
    pa.field("split", pa.string(), nullable=False),           # train | val | test (partition)
    pa.field("sample_id", pa.string(), nullable=False),       # unique within a source
    pa.field("image_id", pa.string(), nullable=False),        # dicom_id / VinDr image_id / NIH Image Index
    pa.field("patient_id", pa.string()),
    pa.field("study_id", pa.string()),
    pa.field("view_position", pa.string()),
    pa.field("source_path", pa.string(), nullable=False),     # image path relative to the raw root
    pa.field("orig_width", pa.int32(), nullable=False),
    pa.field("orig_height", pa.int32(), nullable=False),
    pa.field("image_size", pa.int32(), nullable=False),       # side of the stored square image
    pa.field("image_png", pa.binary(), nullable=False),       # 8-bit grayscale PNG, image_size x image_size
    pa.field("boxes", pa.list_(BOX)),                         # pathology boxes (VinDr fused, NIH, MS-CXR)
    pa.field("labels", pa.list_(LABEL)),                      # image labels (CheXpert, VinDr vote, NIH, MS-CXR)
    pa.field("report_sentences", pa.list_(pa.string())),      # findings + impression sentences (MIMIC)
    pa.field("region_boxes", pa.list_(BOX)),                  # Chest ImaGenome anatomy boxes
    pa.field("region_labels", pa.list_(REGION_LABEL)),        # Chest ImaGenome findings per region (1 yes, 0 no)
    pa.field("region_phrases", pa.list_(REGION_PHRASES)),     # Chest ImaGenome phrases per region
    pa.field("grounded_phrases", pa.list_(GROUNDED_PHRASE)),  # MS-CXR phrases with their boxes
])
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in PARTITION_COLUMNS])

REJECT_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_path", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),           # table | missing | image | report | scene_graph | box | phrase
    pa.field("reason", pa.string(), nullable=False),
    pa.field("record_id", pa.string(), nullable=False),
])
