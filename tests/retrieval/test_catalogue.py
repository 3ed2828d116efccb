"""Reading image folders and manifest.csv catalogues."""
from __future__ import annotations

import pytest

from opencir.retrieval.catalogue import read_catalogue


def test_folder_ids_are_relative_paths_without_extension(tmp_path, make_images):
    make_images(tmp_path / "b", 2, prefix="x")
    make_images(tmp_path / "a", 1, prefix="y")
    make_images(tmp_path / ".hidden", 1, prefix="z")
    (tmp_path / "notes.txt").write_text("not an image")
    catalogue = read_catalogue(tmp_path)
    assert [e.image_id for e in catalogue.entries] == ["a/y000", "b/x000", "b/x001"]
    assert all(e.path.is_absolute() and e.path.is_file() for e in catalogue.entries)
    dataset = catalogue.as_dataset()
    assert dataset.gallery_ids == ["a/y000", "b/x000", "b/x001"]
    assert dataset.images["b/x001"].path == catalogue.entries[2].path


def test_folder_id_collision_names_both_files(tmp_path, make_images):
    make_images(tmp_path, 1, prefix="a")
    (tmp_path / "a000.png").rename(tmp_path / "a000.jpg")
    make_images(tmp_path, 1, prefix="a")
    with pytest.raises(ValueError, match="used twice"):
        read_catalogue(tmp_path)


def test_empty_folder_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="holds no images"):
        read_catalogue(tmp_path)
    with pytest.raises(FileNotFoundError, match="catalogue not found"):
        read_catalogue(tmp_path / "nope")


def test_csv_manifest_columns(tmp_path, make_images):
    make_images(tmp_path / "imgs", 3)
    make_images(tmp_path / "masks", 1, prefix="m")
    (tmp_path / "manifest.csv").write_text(
        "path,id,mask_path,colour,brand\n"
        "imgs/img000.png,first,masks/m000.png,red,acme\n"
        "imgs/img001.png,,,blue,\n"
        f"{tmp_path / 'imgs' / 'img002.png'},third,,,\n"
    )
    catalogue = read_catalogue(tmp_path / "manifest.csv")
    first, second, third = catalogue.entries
    assert (first.image_id, first.metadata, first.mask_path) == ("first", {"colour": "red", "brand": "acme"}, tmp_path / "masks" / "m000.png")
    assert (second.image_id, second.metadata, second.mask_path) == ("imgs/img001", {"colour": "blue"}, None)
    assert (third.image_id, third.metadata) == ("third", None)
    assert second.path == (tmp_path / "imgs" / "img001.png").resolve()


@pytest.mark.parametrize(
    "content, error, match",
    [
        ("file,id\nx.png,a\n", ValueError, "'path' column"),
        ("path\nmissing.png\n", FileNotFoundError, r"manifest.csv:2: image not found"),
        ("path\n\n", ValueError, "lists no images"),
        ("path,id\nimgs/img000.png,a\nimgs/img001.png,a\n", ValueError, r"manifest.csv:3: image id 'a' is used twice"),
        ("path,mask_path\nimgs/img000.png,nomask.png\n", FileNotFoundError, "mask not found"),
        ("path,id\nimgs/img000.png,\"bad\nid\"\n", ValueError, "invalid image id"),
    ],
)
def test_csv_manifest_errors_name_the_line(tmp_path, make_images, content, error, match):
    make_images(tmp_path / "imgs", 2)
    (tmp_path / "manifest.csv").write_text(content)
    with pytest.raises(error, match=match):
        read_catalogue(tmp_path / "manifest.csv", on_error="fail")


def test_manifest_id_column_is_image_id_or_id(tmp_path):
    from opencir.retrieval.catalogue import read_catalogue
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    for header in ("image_id", "id"):
        (tmp_path / "m.csv").write_text(f"{header},path\nsku-1,a.png\n")
        assert [e.image_id for e in read_catalogue(tmp_path / "m.csv").entries] == ["sku-1"]
    (tmp_path / "m.csv").write_text("image_id,id,path\nsku-1,x,a.png\n")
    with pytest.raises(ValueError, match="both 'image_id' and 'id' columns"):
        read_catalogue(tmp_path / "m.csv")
