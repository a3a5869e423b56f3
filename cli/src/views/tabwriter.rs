//! Go's `text/tabwriter`, cell for cell: istioctl prints every table through
//! it, so matching its output byte for byte means matching its algorithm,
//! not approximating column widths.
//!
//! Text is split into cells at tabs; a line's last cell (after its last tab)
//! is not part of any column. A column block is a run of consecutive lines
//! that all have a cell in that column; its width is the widest cell plus
//! `padding` (at least `minwidth`), and the blocks of the columns to its
//! right are formatted within it, recursively, exactly as Go's `format` does.
//! A line with a single cell ends every block (Go flushes there). Only the
//! flags istioctl uses are supported: none (left-aligned, no escapes, no
//! HTML filtering, empty columns kept).
//!
//! Hand-written because no crate reproduces Go's block semantics (the
//! `tabwriter` crate pads each column over the whole text, which differs as
//! soon as a line has fewer cells than its neighbours).

/// One cell: its text's byte length, its width in runes, and whether a tab
/// ended it.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    size: usize,
    width: usize,
    htab: bool,
}

/// A Go `tabwriter.Writer` with `Init(out, minwidth, tabwidth, padding,
/// padchar, 0)`, writing into a string.
#[derive(Debug)]
pub struct TabWriter {
    minwidth: usize,
    tabwidth: usize,
    padding: usize,
    padchar: char,
    buf: Vec<u8>,
    cell: Cell,
    lines: Vec<Vec<Cell>>,
    widths: Vec<usize>,
    out: String,
}

impl TabWriter {
    /// `tabwriter.NewWriter(out, minwidth, tabwidth, padding, padchar, 0)`.
    pub fn new(minwidth: usize, tabwidth: usize, padding: usize, padchar: char) -> Self {
        let mut w = TabWriter {
            minwidth,
            tabwidth,
            padding,
            padchar,
            buf: Vec::new(),
            cell: Cell::default(),
            lines: Vec::new(),
            widths: Vec::new(),
            out: String::new(),
        };
        w.reset();
        w
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.cell = Cell::default();
        self.lines = vec![Vec::new()];
        self.widths.clear();
    }

    /// Writes `text` (Go's `Write`): tabs end cells, newlines end lines.
    pub fn write_str(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut n = 0;
        for (i, &ch) in bytes.iter().enumerate() {
            if !matches!(ch, b'\t' | b'\x0b' | b'\n' | b'\x0c') {
                continue;
            }
            self.append(&bytes[n..i]);
            n = i + 1;
            let ncells = self.terminate_cell(ch == b'\t');
            if ch == b'\n' || ch == b'\x0c' {
                self.lines.push(Vec::new());
                // A line of one cell has no say in any column: Go formats
                // and writes out everything buffered so far.
                if ch == b'\x0c' || ncells == 1 {
                    self.flush_buffered();
                }
            }
        }
        self.append(&bytes[n..]);
    }

    /// Flushes and returns everything written so far (Go's `Flush`).
    pub fn finish(mut self) -> String {
        self.flush_buffered();
        self.out
    }

    fn append(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(text);
        self.cell.size += text.len();
    }

    fn terminate_cell(&mut self, htab: bool) -> usize {
        self.cell.htab = htab;
        // Width in runes of the cell's text (Go's utf8.RuneCount).
        let start = self.buf.len() - self.cell.size;
        self.cell.width = String::from_utf8_lossy(&self.buf[start..]).chars().count();
        let line = self.lines.last_mut().expect("always one line");
        line.push(self.cell);
        self.cell = Cell::default();
        line.len()
    }

    fn flush_buffered(&mut self) {
        if self.cell.size > 0 {
            self.terminate_cell(false);
        }
        let n = self.lines.len();
        self.format(0, 0, n);
        self.reset();
    }

    /// Go's `format`: the column blocks of column `widths.len()` within
    /// lines `line0..line1`, each formatted recursively.
    fn format(&mut self, pos0: usize, mut line0: usize, line1: usize) -> usize {
        let mut pos = pos0;
        let column = self.widths.len();
        let mut this = line0;
        while this < line1 {
            if column + 1 >= self.lines[this].len() {
                this += 1;
                continue;
            }
            // A cell in this column: the block starts here.
            pos = self.write_lines(pos, line0, this);
            line0 = this;
            let mut width = self.minwidth;
            while this < line1 {
                let line = &self.lines[this];
                if column + 1 >= line.len() {
                    break;
                }
                let w = line[column].width + self.padding;
                if w > width {
                    width = w;
                }
                this += 1;
            }
            self.widths.push(width);
            pos = self.format(pos, line0, this);
            self.widths.pop();
            line0 = this;
        }
        self.write_lines(pos, line0, line1)
    }

    fn write_lines(&mut self, mut pos: usize, line0: usize, line1: usize) -> usize {
        for i in line0..line1 {
            for j in 0..self.lines[i].len() {
                let c = self.lines[i][j];
                if c.size > 0 {
                    let text = String::from_utf8_lossy(&self.buf[pos..pos + c.size]).into_owned();
                    self.out.push_str(&text);
                    pos += c.size;
                }
                if j < self.widths.len() {
                    self.pad(c.width, self.widths[j]);
                }
            }
            if i + 1 == self.lines.len() {
                // The last buffered line has no newline yet: only its
                // unterminated text.
                let text =
                    String::from_utf8_lossy(&self.buf[pos..pos + self.cell.size]).into_owned();
                self.out.push_str(&text);
                pos += self.cell.size;
            } else {
                self.out.push('\n');
            }
        }
        pos
    }

    fn pad(&mut self, textw: usize, cellw: usize) {
        if self.padchar == '\t' {
            if self.tabwidth == 0 {
                return;
            }
            let cellw = cellw.div_ceil(self.tabwidth) * self.tabwidth;
            let n = cellw - textw;
            for _ in 0..n.div_ceil(self.tabwidth) {
                self.out.push('\t');
            }
            return;
        }
        for _ in textw..cellw {
            self.out.push(self.padchar);
        }
    }
}

/// Writes `text` through a fresh writer with istioctl's usual settings
/// `(0, 8, padding, ' ')` and returns the formatted table.
pub fn table(padding: usize, text: &str) -> String {
    let mut w = TabWriter::new(0, 8, padding, ' ');
    w.write_str(text);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's own `Example_elastic`-style case: columns sized per block.
    #[test]
    fn columns_are_sized_per_block_as_go_does() {
        let mut w = TabWriter::new(0, 8, 1, '.');
        w.write_str("a\tb\tc\naa\tbb\tcc\naaa\t\naaaa\tdddd\teeee\n");
        // Go prints (from its documentation of Example_elastic, with '.'
        // padding and padding 1): the third line has one cell in column 0
        // only, so column 1's block ends at line 2 and restarts at line 4.
        assert_eq!(w.finish(), "a....b..c\naa...bb.cc\naaa..\naaaa.dddd.eeee\n");
    }

    #[test]
    fn a_line_without_tabs_ends_the_blocks() {
        let out = table(2, "x\ty\nlonger text\nab\tc\n");
        assert_eq!(out, "x  y\nlonger text\nab  c\n");
    }

    #[test]
    fn empty_cells_are_padded_and_trailing_text_is_not() {
        let out = table(5, "NAME\tTYPE\tX\nn\t\tlast\n");
        assert_eq!(out, "NAME     TYPE     X\nn                 last\n");
    }

    #[test]
    fn widths_count_runes_not_bytes() {
        let out = table(1, "é\tx\nab\ty\n");
        assert_eq!(out, "é  x\nab y\n");
    }

    #[test]
    fn unterminated_text_is_written_at_flush() {
        let out = table(1, "a\tb\nc");
        assert_eq!(out, "a b\nc");
    }

    #[test]
    fn min_width_holds() {
        let mut w = TabWriter::new(6, 8, 1, ' ');
        w.write_str("a\tb\n");
        assert_eq!(w.finish(), "a     b\n");
    }
}
