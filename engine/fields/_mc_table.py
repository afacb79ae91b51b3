"""The classic marching-cubes triangle table (Lorensen & Cline 1987; the public-domain table popularised by
Paul Bourke), written in tide's own corner and edge numbering.

Origin: generated once by running ``skimage.measure.marching_cubes(method="lorensen")`` on each of the 256
two-by-two-by-two sign configurations and reading which cube edge every output vertex lies on (see
``derive_from_skimage``). Checked by ``tests/fields/test_isosurface.py``.

Numbering:

* corner ``b = dx | dy << 1 | dz << 2`` for the corner at offset (dx, dy, dz) of the cell;
* the case index has bit ``b`` set when corner ``b`` is inside (value <= level);
* edge ``e = 4 * axis + o1 + 2 * o2``: it runs along ``axis`` from the cell corner whose two other offsets are
  (o1, o2), taken in increasing axis order (x-edges: (dy, dz); y-edges: (dx, dz); z-edges: (dx, dy));
* each row lists triangles as edge triples, wound so that face normals point towards increasing values
  (outward for a signed distance field), the same as skimage's default ``gradient_direction="descent"``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["TRIANGLES", "triangle_table", "derive_from_skimage"]

# One hex digit per edge, three digits per triangle; row index = case index.
TRIANGLES = (
    "", "048", "509", "489495", "1a4", "1a8180", "951a919409a4", "951a9189a", "b15", "805b858148b1", "09b0b1",
    "b148b49b8", "a45a5b", "805b85a8b", "a409a0ba9", "9a8ba9", "628", "046062", "629569608650", "629569465",
    "2841242a621a", "1a6216012", "95251216261a408", "5199121a2a62", "6285b1", "b205b0b624b1b46", "6108606b196269b",
    "9b2b424624b1", "2ba62a25b428245", "ba60b62065b0", "0842a629a9ba", "2969a69ba", "792", "790470782748", "502527",
    "482742547", "79241a", "7a827871a079701", "a751a5a270a4a02", "7525a2a8251a", "27b12b259215", "2787b8b484b1590",
    "27b12b021", "b14b487b8278", "2459252a4b272ba", "5907827b8ba8", "027a07ba70a4", "7b2b82ba8", "798786",
    "790470674", "508658756", "746754", "19841817961a167", "67a70a01a079", "4085a67561a5", "a61651675",
    "167b17186915198", "590714674b17", "108718678b17", "14b47b467", "7a6ba7984594", "a6b67b059", "7b6ba6084",
    "7b66ba", "a36", "04a30a068036", "a36950", "354a34395836389", "364341", "368038130", "964094936195913",
    "136916896195", "6a15616b365b", "80605653635b14a", "69b36b60916a610", "a14b689b836b", "5b3653456",
    "5b3536056806", "640b609b036b", "6838b389b", "a32a28", "04a30a203", "5329525a385058a", "32a25a54a295",
    "284124321", "032013", "408529512132", "519129132", "58a15a52835b532", "14a0b32035b0", "a0810a329b39",
    "2939b34a1", "45853832835b", "b35305320", "b39329408", "29339b", "a379a7a26a92", "a34374704079268",
    "a026a2a507a3a75", "682437547a34", "913793941692964", "268390130793", "753513602640", "517137826",
    "6a2a12192915b37", "26805914ab37", "b37a26a12102", "26814ab37", "7b3526456925", "826b37590", "406026b37",
    "682b37", "a379a78a9", "37aa74794904", "8a0a707507a3", "37a74a754", "987817137841", "907037013", "371751840",
    "371175", "b37a598a915a", "a149057b3", "0818a17b3", "14a7b3", "84945937b", "b37059", "408b37", "7b3", "b73",
    "0483b7", "3b5035397309", "38973934853b354", "41b74b43a473", "701b71780a737a8", "0949747a4a73b51",
    "1b53973a9a89", "731715", "831481873580857", "097307103", "897187317481", "73a47a574", "a807a0570a73",
    "73a7a4974094", "3a7a97a89", "863b838728b7", "b463b6b042b7b20", "3b6b56586850972", "972b63b56546",
    "4181b8b282b73a6", "3a6172012b71", "51b3a6408729", "972a631b5", "857287815386831", "072570463143",
    "729608630310", "143463972", "a63872847457", "052572a63", "0843a6729", "3a6972", "92393b", "4b904943b248423",
    "3b5035230", "54835823853b", "423a43492b414b9", "0191b92a823a", "51b43a403023", "82a23a51b", "159219312",
    "059182312481", "302103", "824214231", "23a52a45a925", "3a2a82590", "40a03a023", "3a22a8", "863b8398b",
    "4606b0b9063b", "b53356506086", "b53563546", "3a61841b8b98", "90b01b63a", "3a608451b", "a6351b", "316196986915",
    "634314905", "638308310", "634431", "5949843a6", "3a6590", "4083a6", "3a6", "b76b6a", "0768060b7a040ab",
    "0ab50b06a709076", "ab4b54876897", "41b74b647", "0181787681b7", "b51940974764", "6878971b5", "6a1561765",
    "14a068056576", "76a07a10a709", "97876814a", "476574", "058568576", "970740764", "978876", "b728b2ab8",
    "2070a7ab7a04", "972b08ab850b", "4a5ab5297", "1b44b8b78728", "72b21b201", "408729b51", "7291b5", "572a528a215a",
    "725205a14", "a18108729", "97214a", "842472457", "052257", "972408", "972", "926a96b9a", "82694ab9a049",
    "ab6b06026b50", "b5a54a268", "b924b2642b41", "1b0b90682", "260640b51", "268b51", "159192a126a2", "68259014a",
    "a16126102", "82614a", "269659645", "268590", "406602", "268", "a98ab9", "4a0a90ab9", "0858b58ab", "4a55ab",
    "1b4b84b98", "90bb01", "084b51", "1b5", "5919a198a", "590a14", "a18810", "a14", "849945", "059", "408", "",
)


def triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(table (256, 15) int32 padded with -1, n_triangles (256,) int32)``."""
    table = np.full((256, 15), -1, dtype=np.int32)
    count = np.zeros(256, dtype=np.int32)
    for case, row in enumerate(TRIANGLES):
        table[case, :len(row)] = [int(ch, 16) for ch in row]
        count[case] = len(row) // 3
    return table, count


def derive_from_skimage() -> tuple[str, ...]:
    """Regenerate ``TRIANGLES`` from scikit-image (a test dependency). Used to check the data above."""
    from skimage.measure import marching_cubes

    others = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
    rows = []
    for case in range(256):
        if case in (0, 255):
            rows.append("")
            continue
        vol = np.empty((2, 2, 2))
        for b in range(8):
            vol[b & 1, (b >> 1) & 1, (b >> 2) & 1] = -1.0 if (case >> b) & 1 else 1.0
        verts, faces, _, _ = marching_cubes(vol, 0.0, method="lorensen")
        digits = []
        for p in verts[faces.reshape(-1)]:
            axis = int(np.argmin(np.abs(p - 0.5)))  # the coordinate that sits mid-edge
            o1, o2 = (int(round(p[a])) for a in others[axis])
            digits.append("%x" % (4 * axis + o1 + 2 * o2))
        rows.append("".join(digits))
    return tuple(rows)
