"""Write nerfcodec_ns/codec/weights/gaussian_tables.npz: CompressAI's GaussianConditional tables for its
default scale table, as computed on this machine. Run once; the SHA-256 it prints goes into
nerfcodec_ns/codec/exact.py (GAUSSIAN_TABLES_SHA256). Every encoder and decoder then uses this
constant instead of computing the tables with float exp/erfc, whose last bits depend on the CPU."""

from nerfcodec_ns.codec.exact import GAUSSIAN_TABLES_FILE, computed_gaussian_tables, write_gaussian_tables

if __name__ == "__main__":
    print(write_gaussian_tables(GAUSSIAN_TABLES_FILE, computed_gaussian_tables()))
