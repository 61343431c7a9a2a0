"""The 40 CelebA(-HQ) attribute names, in the order of ``CelebAMask-HQ-attribute-anno.txt``."""
from __future__ import annotations

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
NUM_ATTRIBUTES = len(ATTRIBUTES)
_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}


class UnknownAttributeError(KeyError):
    """Raised for an attribute name or index that is not one of the 40 CelebA attributes."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def attribute_index(attribute: str | int) -> int:
    """Index of ``attribute`` (name, case-insensitive, or index) in :data:`ATTRIBUTES`.

    >>> attribute_index("Smiling")
    31
    """
    if isinstance(attribute, int) or (isinstance(attribute, str) and attribute.lstrip("-").isdigit()):
        idx = int(attribute)
        if not 0 <= idx < NUM_ATTRIBUTES:
            raise UnknownAttributeError(f"attribute index {idx} out of range 0..{NUM_ATTRIBUTES - 1}")
        return idx
    if attribute in _INDEX:
        return _INDEX[attribute]
    folded = {k.lower(): v for k, v in _INDEX.items()}
    key = str(attribute).lower().replace(" ", "_")
    if key in folded:
        return folded[key]
    raise UnknownAttributeError(
        f"unknown attribute {attribute!r}; valid names are: {', '.join(ATTRIBUTES)}")


def attribute_name(attribute: str | int) -> str:
    """Canonical name of ``attribute`` (name or index)."""
    return ATTRIBUTES[attribute_index(attribute)]
