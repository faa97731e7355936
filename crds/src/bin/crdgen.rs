//! Prints the StreamJob CustomResourceDefinition generated from the Rust types.

fn main() {
    print!("{}", weir_crds::crd_yaml());
}
