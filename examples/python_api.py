"""labelq from Python, as in a notebook: label a folder, then look at the labels as a table.

    python examples/python_api.py               # the default model (from the hub, or its cache)
    python examples/python_api.py --offline DIR # a tiny random model built in DIR: no network (CI runs this)

Each block is a notebook cell. Distributed jobs (workers, a broker) go through ``labelq.Client``; see the
README's "Python" section.
"""

import sys
from pathlib import Path

from PIL import Image

import labelq

photos = Path(__file__).resolve().parent / "photos"
model = "Falconsai/nsfw_image_detection"
if "--offline" in sys.argv:
    from labelq.testing import build_vit

    model = str(build_vit(Path(sys.argv[-1]) / "tiny-vit"))  # same layout and loading code as the hub model

# %% records arrive as the batches finish: stream them anywhere
for record in labelq.label(photos, models=[model], batch_size=8):
    print(f"{record.uri.rsplit('/', 1)[-1]:24} {record.status:5} {record.label or record.error_kind}")

# %% or take them as a table (pandas, or .to_arrow() for Arrow)
df = labelq.label(photos, models=[model]).to_pandas()
print(df[["uri", "label", "score"]].to_string(index=False))
print(df.groupby("label").size().to_string())

# %% images already in memory: PIL images or encoded bytes, with names of your own
images = [("astronaut", Image.open(photos / "astronaut.jpg")), ("coffee", (photos / "coffee.jpg").read_bytes())]
for record in labelq.label(images, models=[model]):
    print(record.uri, record.label, round(record.score, 3))

ok = df[df.status == "ok"]
print(f"labelled {len(ok)} images, {len(df) - len(ok)} errors")
