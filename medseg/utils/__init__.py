"""Small shared utilities; they depend on nothing else in medseg but :mod:`medseg.errors`."""
