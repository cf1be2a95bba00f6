//! The Rust view of the ABI (vtap-abi) must match the C header as compiled:
//! every struct's size and every field's offset are read from the BTF of the
//! built object and compared. Needs no privileges.

use btf_rs::{Btf, Type};
use object::{Object, ObjectSection};

#[test]
fn rust_structs_match_the_btf_of_the_object() {
    let obj = object::File::parse(vtap_core::datapath::TC_OBJECT).expect("ELF");
    let sec = obj.section_by_name(".BTF").expect(".BTF section");
    let btf = Btf::from_bytes(sec.data().unwrap()).expect("BTF");
    let mut checked = 0;
    for (name, size, fields) in vtap_abi::layouts() {
        let types = btf
            .resolve_types_by_name(name)
            .unwrap_or_else(|e| panic!("{name} not in BTF: {e}"));
        let st = types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} is not a struct in BTF"));
        assert_eq!(st.size(), size, "size of struct {name}");
        assert_eq!(
            st.members.len(),
            fields.len(),
            "field count of struct {name}"
        );
        for (m, (fname, off)) in st.members.iter().zip(fields.iter()) {
            let cname = btf.resolve_name(m).unwrap();
            assert_eq!(&cname, fname, "field order of struct {name}");
            assert_eq!(m.bit_offset() as usize, off * 8, "offset of {name}.{fname}");
        }
        checked += 1;
    }
    assert_eq!(checked, vtap_abi::layouts().len());
    assert!(checked >= 17, "checked {checked} structs");
}
